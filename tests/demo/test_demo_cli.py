"""The ``demo`` command's refusals: each one a clear message, exit status 2, nothing started.

These run the real command in a subprocess (as a person would) and need no hub.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_process import free_port


def run_demo(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "demo", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something is listening on for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("option", ["--sandbox-port", "--hub-port"])
def test_port_in_use_names_the_option(tmp_path: Path, busy_port: int, option: str) -> None:
    other = "--hub-port" if option == "--sandbox-port" else "--sandbox-port"
    result = run_demo(tmp_path / "state", option, str(busy_port), other, str(free_port()))
    assert result.returncode == 2, result.stderr
    assert f"port {busy_port} on 127.0.0.1 is already in use" in result.stderr
    assert f"pass {option} with another port" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything was generated or started.
    assert not (tmp_path / "state").exists()


def test_same_port_twice_is_refused(tmp_path: Path) -> None:
    port = str(free_port())
    result = run_demo(tmp_path / "state", "--sandbox-port", port, "--hub-port", port)
    assert result.returncode == 2
    assert "--sandbox-port and --hub-port must be different ports" in result.stderr


def test_host_not_on_this_machine(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    result = run_demo(tmp_path / "state", "--host", "192.0.2.1")
    assert result.returncode == 2
    assert "192.0.2.1 is not an address of this machine; check --host" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_damaged_crypt_key_is_not_silently_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "crypt_key").write_text("not-a-key\n")
    result = run_demo(state, "--sandbox-port", str(free_port()), "--hub-port", str(free_port()))
    assert result.returncode == 2
    assert f"{state / 'crypt_key'} is not a generated key; delete it to make a new one" in (
        result.stderr
    )
    # Refused before starting anything (the sandbox would have made its data directory).
    assert not (state / "sandbox").exists()
