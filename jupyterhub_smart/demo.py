"""``jupyterhub-smart demo``: the sandbox EHR and a SMART-enabled JupyterHub, together.

The demo is what a person tries first, so it does what a real deployment does,
only on loopback: the sandbox runs with interactive sign-in and consent pages
(no auto-approve), the hub authenticates to it as a ``private_key_jwt`` client
with a key pair generated here, auth_state is encrypted with a generated
``JUPYTERHUB_CRYPT_KEY``, and JupyterLab opens the demo notebook. Everything it
generates lives in one state directory (``.demo/`` by default) and is reused by
the next run, so a second run starts in seconds and keeps the same users.

Ctrl-C (or SIGTERM) stops every process the demo started: the sandbox, the hub,
and what the hub started (the proxy, single-user servers, their kernels), even
those that left the hub's process group.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

from .cli import missing_extra, positive_int, tcp_port

#: The hub's client registration at the sandbox.
DEMO_CLIENT_ID = "jupyterhub-demo"
#: The notebooks each demo user finds in their home (package data).
DEMO_NOTEBOOKS = Path(__file__).resolve().with_name("demo_notebooks")
#: Where ``make`` installs configurable-http-proxy when the package runs from a
#: checkout (``npm install`` there); elsewhere it must be on PATH.
LOCAL_NODE_BIN = Path(__file__).resolve().parent.parent / "node_modules" / ".bin"
#: What the demo runs besides the hub: the sandbox's servers, JupyterLab, and
#: what the demo notebook imports (the ``[demo]`` extra).
DEMO_MODULES = ("flask", "waitress", "authlib", "jupyterlab", "ipykernel", "pandas", "matplotlib")
#: How long a child gets to stop by itself (JupyterHub stops the single-user
#: servers and the proxy it started) before it and its descendants are killed.
STOP_GRACE_SECONDS = 20.0
#: JupyterLab user settings the demo gives each new user (name -> settings). JupyterLab
#: otherwise asks every new user whether to fetch news from the internet.
LAB_USER_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
#: The line a person (and the end-to-end test) waits for.
OPEN_LINE = "Open {url} and press Launch next to a patient. Ctrl-C stops the demo."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the sandbox EHR and a SMART-enabled JupyterHub on this machine",
        description=(
            "Start the sandbox EHR (with sign-in and consent pages) and JupyterHub with "
            "SMARTAuthenticator, then print the EHR page to open. Ctrl-C stops everything."
        ),
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".demo"),
        help="generated files: keys, crypt key, databases, logs (default .demo; reused)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address both servers listen on")
    parser.add_argument("--sandbox-port", type=tcp_port, default=8700, help="sandbox EHR port")
    parser.add_argument("--hub-port", type=tcp_port, default=8000, help="JupyterHub's public port")
    parser.add_argument(
        "--patients", type=positive_int, default=20, help="synthetic patients (first run)"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed for the synthetic data")
    parser.add_argument(
        "--access-token-lifetime",
        type=positive_int,
        default=3600,
        help="sandbox access-token lifetime in seconds (small values show refresh at work)",
    )
    parser.add_argument(
        "--fhir-access",
        choices=("token", "proxy"),
        default="token",
        help="how notebooks reach the FHIR server: short-lived tokens from the hub (token), or "
        "only through the hub's auditing FHIR proxy, with no EHR token in kernels (proxy)",
    )
    parser.add_argument(
        "--auto-approve",
        action="store_true",
        help="skip the sandbox's sign-in and consent pages (scripts and tests)",
    )
    parser.set_defaults(func=run)


class DemoError(RuntimeError):
    """A problem the person running the demo can fix; printed without a traceback."""


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT: stop the demo cleanly."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (so that we can bind it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno == errno.EADDRNOTAVAIL:
                raise DemoError(f"{host} is not an address of this machine; check --host") from None
            raise
    return True


def free_port(host: str) -> int:
    """A port the kernel just found free on ``host`` (for the hub's internal listeners)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Refuse to start when a port is taken, naming the option that moves it."""
    if len(set(ports.values())) != len(ports):
        raise DemoError(f"{' and '.join(ports)} must be different ports")
    for option, port in ports.items():
        if not port_is_free(host, port):
            raise DemoError(
                f"port {port} on {host} is already in use; stop what uses it or pass "
                f"{option} with another port"
            )


def ensure_secret_file(path: Path, nbytes: int = 32) -> str:
    """Read a generated secret, making it (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(nbytes))
    value = path.read_text().strip()
    if len(value) != 2 * nbytes:
        raise DemoError(f"{path} is not a generated key; delete it to make a new one")
    return value


def ensure_hub_key(state: Path) -> tuple[Path, dict[str, Any]]:
    """The hub's private key for ``private_key_jwt`` and its public JWKS, made once.

    A second run must reuse the key: the sandbox's client registration (and, in
    a real EHR, the admin's) names this JWKS, and a new key on every run would
    leave stale keys behind in ``jwks.json``.
    """
    from jupyterhub_smart.smart.keys import write_key_pair

    key_dir = state / "keys"
    public = key_dir / "jwks.json"
    pems = sorted(key_dir.glob("smart-rs384-*.pem")) if key_dir.is_dir() else []
    if pems and public.exists():
        private = pems[0]
    else:
        private, public = write_key_pair("RS384", key_dir)
    return private, json.loads(public.read_text())


def write_clients_file(state: Path, hub_url: str, jwks: dict[str, Any]) -> Path:
    """Register the hub with the sandbox as a confidential-asymmetric client."""
    clients = [
        {
            "client_id": DEMO_CLIENT_ID,
            "type": "confidential-asymmetric",
            "redirect_uris": [f"{hub_url}/hub/oauth_callback"],
            "jwks": jwks,
        }
    ]
    path = state / "clients.json"
    path.write_text(json.dumps(clients, indent=2))
    return path


def write_hub_config(
    state: Path,
    *,
    host: str,
    hub_port: int,
    hub_api_port: int,
    proxy_api_port: int,
    iss: str,
    key_path: Path,
    fhir_access: str = "token",
    fhir_proxy_port: int = 0,
) -> Path:
    """The demo's ``jupyterhub_config.py``: what an admin would write, plus demo conveniences.

    The hub's internal API and the proxy's API get free ports picked at start,
    so the demo runs next to another hub (whose defaults are 8081 and 8001).
    """
    users_dir = state / "users"
    config = f'''# Generated by `jupyterhub-smart demo`; rewritten on each run.
import json, os, shutil
from pathlib import Path

c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://{host}:{hub_port}"
# Where people reach the hub: the token API's "sign in again" links point here, not at the
# hub's internal API address that notebooks talk to.
c.JupyterHub.public_url = "http://{host}:{hub_port}"
c.JupyterHub.hub_ip = "{host}"
c.JupyterHub.hub_port = {hub_api_port}
c.ConfigurableHTTPProxy.api_url = "http://{host}:{proxy_api_port}"
c.JupyterHub.cookie_secret_file = {str(state / "hub" / "jupyterhub_cookie_secret")!r}
c.JupyterHub.db_url = "sqlite:///" + {str(state / "hub" / "jupyterhub.sqlite")!r}
c.ConfigurableHTTPProxy.pid_file = {str(state / "hub" / "proxy.pid")!r}

c.JupyterHub.authenticator_class = "smart"
c.SMARTAuthenticator.issuers = {{
    {iss!r}: {{
        "client_id": {DEMO_CLIENT_ID!r},
        "client_auth": "private_key_jwt",
        "private_key_path": {str(key_path)!r},
    }},
}}
c.SMARTAuthenticator.default_issuer = {iss!r}
c.SMARTAuthenticator.allow_all = True
c.SMARTAuthenticator.audit_log_path = {str(state / "hub" / "audit.jsonl")!r}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(users_dir / "{username}")!r}
c.Spawner.default_url = "/lab/tree/patient-vitals.ipynb"
c.Spawner.cmd = [{str(Path(sys.executable).with_name("jupyterhub-singleuser"))!r}]
# A busy laptop can take a while to start JupyterLab the first time.
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 120
# Loopback demo, often offline: JupyterLab should not call the internet for news or updates.
c.Spawner.args = [
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
]
if os.geteuid() == 0:
    c.Spawner.args.append("--allow-root")

DEMO_NOTEBOOKS = Path({str(DEMO_NOTEBOOKS)!r})


# JupyterLab asks every new user whether to fetch news from the internet; not here.
LAB_SETTINGS = json.loads({json.dumps(LAB_USER_SETTINGS)!r})


def copy_demo_notebooks(spawner):
    """Put the demo notebooks in the user's home (never overwriting their edits)."""
    home = Path(spawner.home_dir)
    home.mkdir(parents=True, exist_ok=True)
    for notebook in DEMO_NOTEBOOKS.glob("*.ipynb"):
        target = home / notebook.name
        if not target.exists():
            shutil.copy(notebook, target)
    for name, settings in LAB_SETTINGS.items():
        target = home / ".jupyter" / "lab" / "user-settings" / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(settings))


c.Spawner.pre_spawn_hook = copy_demo_notebooks
'''
    if fhir_access == "proxy":
        config += f"""
# FHIR proxy mode: kernels hold no EHR token; the hub's proxy forwards and records each request.
c.SMARTAuthenticator.fhir_access = "proxy"
c.SMARTAuthenticator.fhir_proxy_url = "http://{host}:{fhir_proxy_port}"
"""
    path = state / "jupyterhub_config.py"
    path.write_text(config)
    return path


def _pump(stream: Any, log_path: Path, ready_marker: str | None, ready: threading.Event) -> None:
    """Copy a child's output to its log file, flagging the ready line."""
    with log_path.open("a", encoding="utf-8") as log:
        for line in stream:
            log.write(line)
            log.flush()
            if ready_marker and ready_marker in line:
                ready.set()


def start_process(
    cmd: list[str],
    *,
    log_path: Path,
    ready_marker: str,
    tree: ProcessTree,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.Popen[str]:
    """Start a child, wait for ``ready_marker`` in its output, fail clearly otherwise.

    The child joins ``tree`` as soon as it exists, so that a Ctrl-C while it is
    still starting stops it too.
    """
    process = subprocess.Popen(  # noqa: S603 - our own commands, no shell
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,  # the terminal's Ctrl-C reaches us only; we stop children
    )
    tree.children.append(process)
    ready = threading.Event()
    threading.Thread(
        target=_pump, args=(process.stdout, log_path, ready_marker, ready), daemon=True
    ).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        tree.remember()
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise DemoError(f"{Path(cmd[0]).name} did not start; the end of {log_path}:\n{tail}")
    tree.remember()  # the proxy the hub started, before anyone is told the demo is up
    return process


def _descendants(pid: int) -> list[Any]:
    """Every live descendant of ``pid`` (psutil processes), including other sessions'."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with ipykernel/jupyterlab
        return []
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


class ProcessTree:
    """The demo's children and every process they started, remembered while they run.

    JupyterHub starts the proxy and single-user servers in new sessions, so a
    process-group signal does not reach them; and when the hub crashes they
    are re-parented away, out of sight of a search from the hub's pid. So the
    demo remembers descendants as they appear (:meth:`remember`, called while
    it waits) and, on the way out, kills whatever the children left behind.
    """

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self._seen: dict[int, Any] = {}

    def remember(self) -> None:
        for child in self.children:
            for proc in _descendants(child.pid):
                self._seen.setdefault(proc.pid, proc)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the children (newest first), then every remembered descendant still alive."""
        self.remember()
        for child in reversed(self.children):
            stop_process(child, grace)
        leftovers = [p for p in self._seen.values() if p.is_running()]
        if leftovers:
            import psutil

            for proc in leftovers:
                with suppress(psutil.Error):
                    proc.terminate()
            _gone, alive = psutil.wait_procs(leftovers, timeout=5)
            for proc in alive:
                with suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)


def stop_process(process: subprocess.Popen[str], grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop a child and its process group: SIGTERM first, SIGKILL after ``grace`` seconds.

    The hub, given the time, stops its proxy and single-user servers itself;
    :class:`ProcessTree` kills what it could not.
    """
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`_Stop` in the main thread, for one clean path."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _child_env(**extra: str) -> dict[str, str]:
    """The environment of our children: ours, plus the local proxy on PATH."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    if LOCAL_NODE_BIN.is_dir():
        env["PATH"] = f"{LOCAL_NODE_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: argparse.Namespace) -> int:
    """Bring the demo up, print where to click, and keep it up until Ctrl-C."""
    try:
        return _run(args)
    except DemoError as exc:
        print(f"jupyterhub-smart demo: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    missing = missing_extra("demo", DEMO_MODULES)
    if missing:
        raise DemoError(missing)
    env_path = _child_env()["PATH"]
    if shutil.which("configurable-http-proxy", path=env_path) is None:
        raise DemoError(
            "configurable-http-proxy is not on PATH; run `make demo` (it installs it under "
            "node_modules) or `npm install -g configurable-http-proxy`"
        )
    check_ports(args.host, {"--sandbox-port": args.sandbox_port, "--hub-port": args.hub_port})
    state: Path = args.state_dir.resolve()
    try:
        (state / "hub").mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create {state} ({exc.strerror}); pass --state-dir") from None
    hub_url = f"http://{args.host}:{args.hub_port}"
    sandbox_url = f"http://{args.host}:{args.sandbox_port}"

    key_path, jwks = ensure_hub_key(state)
    clients = write_clients_file(state, hub_url, jwks)
    crypt_key = ensure_secret_file(state / "crypt_key")

    sandbox_cmd = [
        sys.executable,
        "-m",
        "jupyterhub_smart",
        "sandbox",
        "--host",
        args.host,
        "--port",
        str(args.sandbox_port),
        "--data-dir",
        str(state / "sandbox"),
        "--patients",
        str(args.patients),
        "--seed",
        str(args.seed),
        "--clients",
        str(clients),
        "--access-token-lifetime",
        str(args.access_token_lifetime),
        "--app-launch-url",
        f"{hub_url}/hub/oauth_login",
        *(["--auto-approve"] if args.auto_approve else []),
    ]
    tree = ProcessTree()
    with _stop_on_signals():
        try:
            print("Starting the sandbox EHR (the first run generates the synthetic patients)...")
            sys.stdout.flush()
            start_process(
                sandbox_cmd,
                log_path=state / "logs" / "sandbox.log",
                ready_marker="SMART sandbox ready",
                tree=tree,
                env=_child_env(),
            )
            iss = f"{sandbox_url}/fhir"
            config = write_hub_config(
                state,
                host=args.host,
                hub_port=args.hub_port,
                hub_api_port=free_port(args.host),
                proxy_api_port=free_port(args.host),
                iss=iss,
                key_path=key_path,
                fhir_access=args.fhir_access,
                fhir_proxy_port=free_port(args.host),
            )
            print("Starting JupyterHub with SMARTAuthenticator...")
            sys.stdout.flush()
            start_process(
                [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(config)],
                log_path=state / "logs" / "hub.log",
                ready_marker="JupyterHub is now running",
                tree=tree,
                env=_child_env(JUPYTERHUB_CRYPT_KEY=crypt_key),
                cwd=state / "hub",
            )
            print(f"Logs: {state / 'logs'}")
            print(OPEN_LINE.format(url=f"{sandbox_url}/ehr"))
            sys.stdout.flush()
            while all(p.poll() is None for p in tree.children):
                tree.remember()
                time.sleep(0.5)
            names = ("sandbox", "hub")
            dead = [
                name for name, p in zip(names, tree.children, strict=False) if p.poll() is not None
            ]
            raise DemoError(f"the {' and '.join(dead)} stopped unexpectedly; see {state / 'logs'}")
        except (_Stop, KeyboardInterrupt):
            print("\nStopping the demo...")
            sys.stdout.flush()
            return 0
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave servers behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            tree.stop()
