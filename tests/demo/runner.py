"""Run ``jupyterhub-smart demo`` as a person does, from a test: a subprocess on free ports.

The demo is started exactly as documented (``python -m jupyterhub_smart demo``),
its output goes to a log file, and the test waits for the line that tells a
person what to open. Stopping it sends SIGINT, which is what Ctrl-C in a
terminal does.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
from sandbox_process import free_port, start_logged

OPEN_LINE = re.compile(r"^Open (?P<url>http://\S+/ehr) and press Launch", re.MULTILINE)


@dataclass
class DemoProcess:
    """A running demo: where it serves, its state directory, its output."""

    process: subprocess.Popen[str]
    state_dir: Path
    output_path: Path
    sandbox_port: int
    hub_port: int
    ehr_url: str

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> str:
        """Everything the demo and its servers wrote (for secret greps and failure reports)."""
        parts = [self.output()]
        for log in sorted((self.state_dir / "logs").glob("*.log")):
            parts.append(log.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def descendants(self) -> list[psutil.Process]:
        """Every process the demo started, directly or not (sandbox, hub, proxy, servers...)."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def interrupt(self, timeout: float = 90.0) -> int:
        """Ctrl-C: SIGINT to the demo; its exit status once it has stopped."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout)


def _kill_tree(demo: DemoProcess) -> None:
    """Last-resort clean-up when a test failed before stopping the demo itself."""
    leftovers = demo.descendants()
    if demo.process.poll() is None:
        demo.process.send_signal(signal.SIGINT)
        try:
            demo.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.process.kill()
            demo.process.wait(timeout=10)
    for proc in leftovers:
        with suppress(psutil.Error):
            proc.kill()


@contextmanager
def run_demo(
    state_dir: Path,
    *,
    patients: int = 5,
    extra_args: Sequence[str] = (),
    timeout: float = 240.0,
) -> Iterator[DemoProcess]:
    """Start the demo, yield once it printed its Open line, make sure it is gone afterwards."""
    state_dir.mkdir(parents=True, exist_ok=True)
    sandbox_port, hub_port = free_port(), free_port()
    output_path = state_dir.parent / f"{state_dir.name}-demo-output.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterhub_smart",
        "demo",
        "--state-dir",
        str(state_dir),
        "--sandbox-port",
        str(sandbox_port),
        "--hub-port",
        str(hub_port),
        "--patients",
        str(patients),
        *extra_args,
    ]
    process, ready, found = start_logged(cmd, output_path, OPEN_LINE, mode="a")
    demo = DemoProcess(
        process=process,
        state_dir=state_dir,
        output_path=output_path,
        sandbox_port=sandbox_port,
        hub_port=hub_port,
        ehr_url="",
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the demo did not print its Open line (exit {process.poll()}):\n"
                    + demo.logs()[-6000:]
                )
        demo.ehr_url = found["url"]
        yield demo
    finally:
        _kill_tree(demo)
