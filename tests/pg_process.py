"""A real PostgreSQL server for the hub tests, on a Unix socket in a temporary folder.

``run_postgres`` runs ``initdb`` and ``pg_ctl`` from the machine's PostgreSQL
(``make postgresql`` installs Debian's package when it is missing): no TCP
port, trust authentication over the socket, its own data folder, stopped and
deleted when the block ends. PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` account the package creates.

``shared_server`` is the one server of a test process that every hub started
by :func:`hub_process.run_hub` uses when ``SMART_TEST_DB=postgresql`` (each hub
gets a database of its own). Processes a test starts find it through
``SMART_TEST_PG`` instead of starting another. Tests that stop the server (an
outage) start their own with ``run_postgres``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2

#: Which database the hubs of this test run use: "sqlite" (default) or "postgresql".
DB_ENV = "SMART_TEST_DB"
#: "<socket folder>:<port>" of this run's shared server, for the processes tests start.
SHARED_ENV = "SMART_TEST_PG"


def selected_database() -> str:
    """The database the hub suite runs on in this process ("sqlite" or "postgresql")."""
    choice = os.environ.get(DB_ENV, "sqlite").strip().lower() or "sqlite"
    if choice not in ("sqlite", "postgresql"):
        raise RuntimeError(f"{DB_ENV} must be 'sqlite' or 'postgresql', not {choice!r}")
    return choice


def bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: $PG_BIN, Debian's newest, or the PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "PostgreSQL's initdb was not found: run `make postgresql` "
        "(apt-get install -y postgresql) or set PG_BIN"
    )


def _as_server_user() -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a non-root account."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    """One PostgreSQL server: where its socket is, how to reach it, how to stop it."""

    base: Path  # the temporary folder: data/, the socket, the server's log
    port: int
    superuser: str = "postgres"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_as_server_user(), str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) and wait until it accepts connections."""
        self._ctl("-l", str(self.log_path), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: open connections are cut, as in a failover)."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._ctl("status", check=False).returncode == 0

    def connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host=str(self.base), port=self.port, user=self.superuser, dbname=dbname
        )

    def create_database(self, prefix: str = "hub") -> str:
        """A new empty database; its name."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        connection = self.connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return name

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of ``dbname`` (psycopg2, over the Unix socket)."""
        return f"postgresql+psycopg2://{self.superuser}@/{dbname}?host={self.base}&port={self.port}"

    def dump(self, dbname: str, path: Path) -> None:
        """Write ``dbname`` as SQL text to ``path`` (for the session's secret scan)."""
        with path.open("w", encoding="utf-8") as out:
            subprocess.run(
                [
                    str(bin_dir() / "pg_dump"),
                    "-h",
                    str(self.base),
                    "-p",
                    str(self.port),
                    "-U",
                    self.superuser,
                    dbname,
                ],
                stdout=out,
                stderr=subprocess.PIPE,
                check=True,
                timeout=120,
            )


def _new_server() -> PostgresServer:
    """initdb a fresh cluster in a new temporary folder (not started)."""
    base = Path(tempfile.mkdtemp(prefix="smart-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(base, account.pw_uid, account.pw_gid)
    base.chmod(0o755)
    server = PostgresServer(base, port=5432)
    subprocess.run(
        [
            *_as_server_user(),
            str(bin_dir() / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            server.superuser,
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    settings = {
        "listen_addresses": "''",  # the Unix socket only: nothing on the network
        "unix_socket_directories": f"'{base}'",
        "port": str(server.port),
        "fsync": "off",  # a throw-away cluster: durability across a machine crash is not tested
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "32MB",
    }
    with (server.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# jupyterhub-smart tests\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    return server


@contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server until the block ends (then stopped and deleted)."""
    server = _new_server()
    try:
        server.start()
        yield server
    finally:
        _remove(server)


def _remove(server: PostgresServer) -> None:
    if server.running():
        server.stop("immediate")
    shutil.rmtree(server.base, ignore_errors=True)


_shared: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """This test run's PostgreSQL server for hubs (started on first use, stopped at exit)."""
    global _shared
    if _shared is not None:
        return _shared
    inherited = os.environ.get(SHARED_ENV)
    if inherited:
        base, _, port = inherited.rpartition(":")
        _shared = PostgresServer(Path(base), int(port))
        return _shared
    server = _new_server()
    server.start()
    atexit.register(_remove, server)
    os.environ[SHARED_ENV] = f"{server.base}:{server.port}"
    _shared = server
    return server


@dataclass
class HubDatabase:
    """The database of one hub run: its URL, and (PostgreSQL) how to dump it for the scan."""

    url: str
    server: PostgresServer | None = None
    name: str = ""

    def file_in(self, workdir: Path) -> Path:
        """Where the secret scan reads this database: the SQLite file, or a dump of it."""
        if self.server is None:
            return workdir / "jupyterhub.sqlite"
        return workdir / "jupyterhub-db.sql"

    def dump_for_scan(self, path: Path) -> None:
        """PostgreSQL: dump the database into ``path`` (the secret scan reads it)."""
        if self.server is not None and self.server.running():
            self.server.dump(self.name, path)


def new_database(server: PostgresServer) -> HubDatabase:
    """A fresh database on ``server`` for one hub (or several hubs in turn: a restart)."""
    name = server.create_database()
    return HubDatabase(server.url(name), server, name)
