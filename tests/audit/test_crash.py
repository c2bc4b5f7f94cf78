"""SIGKILL a writer at random moments: every acknowledged event survives, the log verifies."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from jupyterhub_smart.audit.verify import expand_paths, iter_verified

WRITER = Path(__file__).with_name("crash_writer.py")


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rng = random.Random(1234)
    acknowledged: dict[int, str] = {}
    runs = 12
    for run in range(runs):
        child = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        # Wait for the first acknowledgement, then kill at a random moment after it.
        first = child.stdout.readline()
        assert first, child.stderr.read().decode() if child.stderr else ""
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        for line in (first + rest).splitlines():
            parts = line.decode().split(" ")
            if len(parts) == 2:  # a complete acknowledgement line
                acknowledged[int(parts[0])] = parts[1]
    # Recovery (torn tail, if any) happens when the next writer opens the log.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from jupyterhub_smart.audit import AuditLog; AuditLog(__import__('sys').argv[1]).close()",
            str(path),
        ],
        check=True,
    )
    names: dict[int, str] = {}
    for entry in iter_verified(expand_paths([path])):  # raises ChainBroken if anything is off
        agent = entry.record["agent"][0]
        if "altId" in agent:  # audit-recovered events (after a torn tail) name no user
            names[entry.record["seq"]] = agent["altId"]
        else:
            assert "audit-recovered" in str(entry.record["subtype"]), entry.record
    assert len(acknowledged) > runs
    print(
        f"{len(acknowledged)} acknowledged, {len(names)} in the log, torn: {len(list(tmp_path.glob('*.torn-*')))}"
    )
    missing = {seq: name for seq, name in acknowledged.items() if names.get(seq) != name}
    assert not missing, f"acknowledged but not in the log: {sorted(missing)[:10]}"
    assert len(list(tmp_path.glob("audit.jsonl.*[0-9]"))) >= 1  # rotation happened under kills
