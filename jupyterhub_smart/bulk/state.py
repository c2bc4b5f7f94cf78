"""The export's persisted state (``export.json``), written atomically, and the per-server lock.

``export.json`` is rewritten (temporary file, fsync, rename) after every
committed chunk of every file, so a crash at any instant leaves either the old
or the new state, never a torn one. It holds what ``--resume`` needs: the
status URL, the manifest, per file the committed byte offset, line count and
chunk number, and ``transactionTime`` (the next run's ``--since auto``). It
never holds a token.

One export at a time per client and server: EHRs refuse a second one with
429. :class:`ServerLock` is an ``flock`` on a file named after both, so a
second run waits in line (and says so) instead of being refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import BudgetExceeded, BulkError

STATE_FILE = "export.json"
STATE_VERSION = 1


@dataclass
class FileState:
    """Progress of one manifest file."""

    key: str
    kind: str
    type: str
    url: str
    count: int | None
    #: Local name under ``ndjson/<type>/`` (or ``deleted/``, ``errors/``).
    name: str = ""
    #: Bytes of the response body (as sent: gzip stays gzip) committed to the local file.
    raw_bytes: int = 0
    #: Lines committed (converted to Parquet) so far.
    lines: int = 0
    #: Parquet parts committed so far.
    chunks: int = 0
    gzip: bool | None = None
    done: bool = False
    #: Lines that were not a resource of ``type``.
    invalid: int = 0
    #: A problem found with the whole file (count mismatch ...), for the summary.
    problem: str | None = None


@dataclass
class ExportState:
    """Everything a resumed run needs, and the summary of a finished one."""

    fhir_url: str
    client_id: str
    run: str
    level: str
    group: str | None
    types: list[str]
    since: str | None
    status: str = "new"  # new, kicked-off, downloading, complete, cancelled, failed
    status_url: str | None = None
    transaction_time: str | None = None
    requires_access_token: bool = True
    manifest_request: str | None = None
    files: dict[str, FileState] = field(default_factory=dict)
    #: ``transactionTime`` of earlier completed runs into this directory.
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> ExportState:
        raw = orjson.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise BulkError(f"{STATE_FILE} is not a state file of this version")
        raw["files"] = {k: FileState(**v) for k, v in raw.get("files", {}).items()}
        return cls(**raw)


class StateFile:
    """``export.json`` in the output directory, saved atomically and thread-safely."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._lock = threading.Lock()

    def load(self) -> ExportState | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return ExportState.from_json(data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise BulkError(f"{self.path} is unreadable ({type(exc).__name__})") from None

    def save(self, state: ExportState) -> None:
        with self._lock:
            data = state.to_json()
            tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            with tmp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_lock_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jupyterhub-smart" / "bulk-locks"


@contextlib.contextmanager
def server_lock(
    lock_dir: Path,
    fhir_url: str,
    client_id: str,
    *,
    deadline: float,
    on_wait: Callable[[], None] = lambda: None,
) -> Iterator[None]:
    """Hold the lock of (server, client) for the block; waits (queued) while another run holds it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{fhir_url.rstrip('/')}\n{client_id}".encode()).hexdigest()[:24]
    path = lock_dir / f"{digest}.lock"
    with path.open("a+") as handle:
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    on_wait()
                    told = True
                if time.monotonic() > deadline:
                    raise BudgetExceeded(
                        "another export by this client at this server is still running; "
                        "the --timeout budget ran out waiting for it"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
