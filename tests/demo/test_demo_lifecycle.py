"""The demo's life: it comes up, Ctrl-C stops every process it started, a second run reuses its keys.

One test, because each demo start costs seconds: the first run signs a user in
through an EHR launch (driven over plain HTTP, ``--auto-approve``) so that the
hub has started a single-user server (in its own session, out of reach of a
process-group signal) before Ctrl-C; the second run starts from the same state
directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from sandbox_process import free_port

from .runner import DemoProcess, run_demo

pytestmark = pytest.mark.slow


def _patient_ids(demo: DemoProcess) -> list[str]:
    page = httpx.get(demo.ehr_url, timeout=30)
    assert page.status_code == 200
    return re.findall(r'name="patient" value="([^"]+)"', page.text)


def _launch_and_wait_for_server(demo: DemoProcess, patient: str) -> None:
    """EHR launch -> hub -> sandbox (auto-approve) -> hub callback -> spawn; wait for the server."""
    with httpx.Client(follow_redirects=True, timeout=60) as browser:
        response = browser.get(f"{demo.sandbox_url}/ehr/launch", params={"patient": patient})
        assert response.status_code == 200, response.text[:2000]
        assert str(response.url).startswith(demo.hub_url), response.url
    hub_log = demo.state_dir / "logs" / "hub.log"
    deadline = time.monotonic() + 180
    while not re.search(r"User \S+ took [\d.]+ seconds to start", hub_log.read_text()):
        assert time.monotonic() < deadline, hub_log.read_text()[-4000:]
        time.sleep(0.5)


def _key_files(state: Path) -> dict[str, bytes]:
    names = ["crypt_key", "keys/jwks.json", "hub/jupyterhub_cookie_secret"]
    files = {name: (state / name).read_bytes() for name in names}
    for pem in sorted((state / "keys").glob("*.pem")):
        files[f"keys/{pem.name}"] = pem.read_bytes()
    return files


def test_ctrl_c_stops_everything_and_a_second_run_reuses_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with run_demo(state, extra_args=["--auto-approve"]) as demo:
        assert demo.ehr_url == f"{demo.sandbox_url}/ehr"
        patients = _patient_ids(demo)
        assert len(patients) == 5
        _launch_and_wait_for_server(demo, patients[0])
        children = demo.descendants()
        commands = [" ".join(p.cmdline()) for p in children]
        for part in (
            "sandbox",
            "jupyterhub -f",
            "configurable-http-proxy",
            "jupyterhub-singleuser",
        ):
            assert any(part in c for c in commands), (part, commands)
        first = _key_files(state)
        assert (state / "crypt_key").stat().st_mode & 0o077 == 0
        assert len([n for n in first if n.endswith(".pem")]) == 1

        assert demo.interrupt() == 0
        # Every process it started is gone, whatever its session or process group.
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
        assert "Stopping the demo" in demo.output()
        for port in (demo.sandbox_port, demo.hub_port):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)

    with run_demo(state) as again:
        assert _key_files(state) == first
        # The sandbox registration written for run 2 names the same public key.
        registered = json.loads((state / "clients.json").read_text())[0]["jwks"]
        assert registered == json.loads(first["keys/jwks.json"])
        assert again.interrupt() == 0


def test_a_dead_hub_stops_the_demo_with_a_message(tmp_path: Path) -> None:
    with run_demo(tmp_path / "state") as demo:
        children = demo.descendants()
        hub = next(p for p in children if "jupyterhub -f" in " ".join(p.cmdline()))
        hub.kill()  # a crash: no clean-up of its own
        assert demo.process.wait(timeout=60) == 2
        assert "the hub stopped unexpectedly; see" in demo.output()
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [" ".join(p.cmdline()) for p in alive]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopping_while_starting_stops_what_was_started(tmp_path: Path, signum: int) -> None:
    """Ctrl-C (or a service manager's SIGTERM) as soon as the sandbox exists: nothing is left."""
    state = tmp_path / "state"
    output = tmp_path / "output.log"
    with output.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterhub_smart",
                "demo",
                "--state-dir",
                str(state),
                "--sandbox-port",
                str(free_port()),
                "--hub-port",
                str(free_port()),
                "--patients",
                "5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        demo = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        children: list[psutil.Process] = []
        while not any("sandbox" in " ".join(c.cmdline()) for c in children):
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
            children = demo.children(recursive=True)
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0, output.read_text()
        assert "Stopping the demo" in output.read_text()
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
