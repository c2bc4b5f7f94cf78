"""Option values both long-running commands refuse, with the same words (one set of argument types).

The real command runs in a subprocess, as a person would run it; argparse
refuses before anything starts, so these need no sandbox and no hub.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: (command, the option of the port it listens on)
COMMANDS = [("demo", "--hub-port"), ("sandbox", "--port")]
BAD_VALUES = [
    ("{port}", "0", "'0' is not a TCP port (1-65535)"),
    ("{port}", "70000", "'70000' is not a TCP port (1-65535)"),
    ("{port}", "http", "'http' is not a whole number"),
    ("--patients", "0", "'0' must be at least 1"),
    ("--patients", "2.5", "'2.5' is not a whole number"),
    ("--access-token-lifetime", "-5", "'-5' must be at least 1"),
]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(("command", "port_option"), COMMANDS)
@pytest.mark.parametrize(("option", "value", "message"), BAD_VALUES)
def test_bad_option_values(
    tmp_path: Path, command: str, port_option: str, option: str, value: str, message: str
) -> None:
    result = run(tmp_path, command, option.format(port=port_option), value)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing generated or started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sandbox", "--dense-patient-observations", "-1"], "'-1' must not be negative"),
        (["sandbox", "--bulk-job-seconds", "-0.5"], "'-0.5' must not be negative"),
        (["sandbox", "--bulk-job-seconds", "nan"], "'nan' must not be negative"),
        (["sandbox", "--bulk-job-seconds", "soon"], "'soon' is not a number"),
        (["bulk", "export", "--parallel", "0"], "'0' must be at least 1"),
    ],
)
def test_other_counts_and_amounts(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
