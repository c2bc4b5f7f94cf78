"""``jupyterhub-smart demo``: the sandbox EHR and a SMART-enabled JupyterHub, together.

The demo is what a person tries first, so it does what a real deployment does,
only on loopback: the sandbox runs with interactive sign-in and consent pages
(no auto-approve), the hub authenticates to it as a ``private_key_jwt`` client
with a key pair generated here, auth_state is encrypted with a generated
``JUPYTERHUB_CRYPT_KEY``, and JupyterLab opens the demo notebook. Everything it
generates lives in one state directory (``.demo/`` by default) and is reused by
the next run, so a second run starts in seconds and keeps the same users.
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
from pathlib import Path
from typing import Any

#: The hub's client registration at the sandbox.
DEMO_CLIENT_ID = "jupyterhub-demo"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_NOTEBOOKS = REPO_ROOT / "demo" / "notebooks"


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
    parser.add_argument("--state-dir", type=Path, default=Path(".demo"), help="generated files")
    parser.add_argument("--host", default="127.0.0.1", help="address both servers listen on")
    parser.add_argument("--sandbox-port", type=int, default=8700, help="sandbox EHR port")
    parser.add_argument("--hub-port", type=int, default=8000, help="JupyterHub's public port")
    parser.add_argument("--patients", type=int, default=20, help="synthetic patients")
    parser.add_argument("--seed", type=int, default=42, help="seed for the synthetic data")
    parser.add_argument(
        "--access-token-lifetime",
        type=int,
        default=3600,
        help="sandbox access-token lifetime in seconds (small values show refresh at work)",
    )
    parser.add_argument(
        "--auto-approve",
        action="store_true",
        help="skip the sandbox's sign-in and consent pages (scripts and tests)",
    )
    parser.set_defaults(func=run)


class DemoError(RuntimeError):
    """A problem the person running the demo can fix; printed without a traceback."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (so that we can bind it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Refuse to start when a port is taken, naming the option that moves it."""
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
    return path.read_text().strip()


def ensure_hub_key(state: Path) -> tuple[Path, dict[str, Any]]:
    """The hub's private key for ``private_key_jwt`` and its public JWKS."""
    from jupyterhub_smart.smart.keys import write_key_pair

    key_dir = state / "keys"
    private = key_dir / "hub-private-key.pem"
    public = key_dir / "jwks.json"
    if not (private.exists() and public.exists()):
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


def write_hub_config(state: Path, *, host: str, hub_port: int, iss: str, key_path: Path) -> Path:
    """The demo's ``jupyterhub_config.py``: what an admin would write, plus demo conveniences."""
    users_dir = state / "users"
    config = f'''# Generated by `jupyterhub-smart demo`; edit freely, it is rewritten on each run.
import os, shutil
from pathlib import Path

c = get_config()  # noqa: F821
c.JupyterHub.bind_url = "http://{host}:{hub_port}"
c.JupyterHub.hub_ip = "{host}"
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
if os.geteuid() == 0:
    c.Spawner.args = ["--allow-root"]

DEMO_NOTEBOOKS = Path({str(DEMO_NOTEBOOKS)!r})


def copy_demo_notebooks(spawner):
    """Put the demo notebooks in the user's home (never overwriting their edits)."""
    home = Path(spawner.home_dir)
    home.mkdir(parents=True, exist_ok=True)
    for notebook in DEMO_NOTEBOOKS.glob("*.ipynb"):
        target = home / notebook.name
        if not target.exists():
            shutil.copy(notebook, target)


c.Spawner.pre_spawn_hook = copy_demo_notebooks
'''
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
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.Popen[str]:
    """Start a child, wait for ``ready_marker`` in its output, fail clearly otherwise."""
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    ready = threading.Event()
    threading.Thread(
        target=_pump, args=(process.stdout, log_path, ready_marker, ready), daemon=True
    ).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise DemoError(f"{cmd[0]} did not start; the end of {log_path}:\n{tail}")
    return process


def stop_process(process: subprocess.Popen[str]) -> None:
    """Stop a child and everything it started (its process group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(args: argparse.Namespace) -> int:
    """Bring the demo up, print where to click, and keep it up until Ctrl-C."""
    try:
        return _run(args)
    except DemoError as exc:
        print(f"jupyterhub-smart demo: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if shutil.which("configurable-http-proxy") is None:
        raise DemoError(
            "configurable-http-proxy is not on PATH; run `make demo` (it installs it under "
            "node_modules) or `npm install -g configurable-http-proxy`"
        )
    check_ports(args.host, {"--sandbox-port": args.sandbox_port, "--hub-port": args.hub_port})
    state: Path = args.state_dir.resolve()
    (state / "hub").mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(parents=True, exist_ok=True)
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
    print("Starting the sandbox EHR (the first run generates the synthetic patients)...")
    sandbox = start_process(
        sandbox_cmd,
        log_path=state / "logs" / "sandbox.log",
        ready_marker="SMART sandbox ready",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    processes = [sandbox]
    try:
        iss = f"{sandbox_url}/fhir"
        config = write_hub_config(
            state, host=args.host, hub_port=args.hub_port, iss=iss, key_path=key_path
        )
        print("Starting JupyterHub with SMARTAuthenticator...")
        hub_env = {**os.environ, "JUPYTERHUB_CRYPT_KEY": crypt_key, "PYTHONUNBUFFERED": "1"}
        hub = start_process(
            [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(config)],
            log_path=state / "logs" / "hub.log",
            ready_marker="JupyterHub is now running",
            env=hub_env,
            cwd=state / "hub",
        )
        processes.append(hub)
        print(f"Logs: {state / 'logs'}")
        print(f"Open {sandbox_url}/ehr and press Launch next to a patient. Ctrl-C stops the demo.")
        sys.stdout.flush()
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        dead = [cmd for cmd, p in zip(("sandbox", "hub"), processes) if p.poll() is not None]
        raise DemoError(f"the {' and '.join(dead)} stopped unexpectedly; see {state / 'logs'}")
    except KeyboardInterrupt:
        print("\nStopping the demo...")
        return 0
    finally:
        for process in reversed(processes):
            stop_process(process)
