"""Start a real sandbox EHR process for a test, on a free loopback port.

Tests talk to the sandbox over HTTP exactly as a hub or a notebook does; this
module only spawns ``jupyterhub-smart sandbox``, waits for its ready line, keeps
its output in a log file (which the session's secret scan reads), and stops it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leak_scan import saw, wrote_sandbox

READY = re.compile(r"SMART sandbox ready: iss=(?P<iss>\S+)")


def start_logged(
    cmd: Sequence[str], log_path: Path, ready_line: re.Pattern[str], *, mode: str = "w"
) -> tuple[subprocess.Popen[str], threading.Event, dict[str, str]]:
    """Start ``cmd`` with its output copied to ``log_path`` line by line.

    The returned event is set when a line matches ``ready_line``; the dict then
    holds that match's named groups. Waiting (and giving up) is the caller's:
    the sandbox and the demo fail with different messages.
    """
    log = log_path.open(mode, encoding="utf-8")
    process = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ready = threading.Event()
    found: dict[str, str] = {}

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            match = ready_line.search(line)
            if match and not ready.is_set():
                found.update(match.groupdict())
                ready.set()
        log.close()

    threading.Thread(target=pump, daemon=True).start()
    return process, ready, found


#: Ports this process has handed out (a port is handed out once per test session).
_handed_out: set[int] = set()


def _port_slice() -> range:
    """The ports :func:`free_port` picks from in this process.

    Below the kernel's ephemeral range, which outgoing connections and every
    ``bind(0)`` (JupyterHub's spawners, the proxy's pools) draw from: a port
    picked here cannot be taken by one of those between the pick and the
    server's own bind. Under pytest-xdist each worker has a slice of its own.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    start, end = 10000, low
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    width = (end - start) // count
    if width < 500:
        return range(0)  # no room below the ephemeral range: fall back to bind(0)
    return range(start + index * width, start + (index + 1) * width)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now, never handed out before by this process.

    ``kind``: ``socket.SOCK_STREAM`` (TCP) or ``socket.SOCK_DGRAM`` (UDP).
    """
    ports = _port_slice()
    for _ in range(200):
        if ports:
            port = random.choice(ports)
        else:
            with socket.socket(socket.AF_INET, kind) as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


@dataclass
class SandboxProcess:
    """A running sandbox: its URLs, its log, and the process."""

    iss: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[str]
    clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return self.iss.rsplit("/fhir", 1)[0]

    @property
    def fhir_base_url(self) -> str:
        return self.iss

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """The log once it contains ``text``; fails after ``timeout`` seconds.

        The process's output reaches the log file through a reader thread, so a
        line printed before an HTTP response may land in the file just after it.
        """
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear in {self.log_path}")
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def run_sandbox(
    workdir: Path,
    clients: Sequence[dict[str, Any]],
    *,
    patients: int = 5,
    seed: int = 7,
    auto_approve: bool = True,
    extra_args: Sequence[str] = (),
    data_dir: Path | None = None,
    port: int | None = None,
    timeout: float = 120.0,
) -> Iterator[SandboxProcess]:
    """Run ``jupyterhub-smart sandbox`` until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    clients_file = workdir / "clients.json"
    clients_file.write_text(json.dumps(list(clients), indent=2), encoding="utf-8")
    data_dir = data_dir or workdir / "data"
    port = port or free_port()
    log_path = workdir / f"sandbox-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterhub_smart",
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--patients",
        str(patients),
        "--seed",
        str(seed),
        "--clients",
        str(clients_file),
        *(["--auto-approve"] if auto_approve else []),
        *extra_args,
    ]
    wrote_sandbox(data_dir, log_path)
    for client in clients:
        saw(client.get("client_secret"), kind="client secret")
    process, ready, found = start_logged(cmd, log_path, READY, mode="w")
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"sandbox did not become ready (exit {process.poll()}):\n"
                + log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            )
    sandbox = SandboxProcess(
        iss=found["iss"],
        port=port,
        data_dir=data_dir,
        log_path=log_path,
        process=process,
        clients=list(clients),
    )
    try:
        yield sandbox
    finally:
        sandbox.stop()
