"""The hub's start-up read of its audit log's tail is bounded (a crash tears one line at most).

A log whose last megabyte holds no complete record (planted, or a disk fault)
is not a torn write: the hub refuses to open it, says why in its log, answers
503 where it would record, and leaves the file as it is. Before, it read the
whole tail into memory, however large, and moved it aside.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hub_process import run_hub
from peak_memory import PEAK_KB

from jupyterhub_smart.audit import AuditLog, hub_event
from jupyterhub_smart.audit.log import MAX_TORN_BYTES
from jupyterhub_smart.audit.verify import MAX_LINE_BYTES

REPORT = {
    "events": [
        {
            "interaction": "read",
            "resource_type": "Patient",
            "status": 200,
            "patient": "Patient/p1",
        }
    ]
}


def _log_with_tail(path: Path, tail_bytes: int) -> int:
    """A valid log of three records, then ``tail_bytes`` of one unterminated line; its size."""
    with AuditLog(path) as log:
        for _ in range(3):
            log.record_sync(hub_event("logout", username="alice"))
    with path.open("ab") as out:
        chunk = b"x" * (1024 * 1024)
        for _ in range(tail_bytes // len(chunk)):
            out.write(chunk)
    return path.stat().st_size


def test_the_limit_is_audit_verifys_line_limit() -> None:
    assert MAX_TORN_BYTES == MAX_LINE_BYTES


@pytest.mark.slow
@pytest.mark.one_pass  # the audit log's own check (a refused start-up runs in both passes)
def test_hub_refuses_an_oversized_torn_tail_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir()
    size = _log_with_tail(path, 3 * 1024 * 1024)
    with run_hub(tmp_path / "hub", audit_path=path) as hub:
        token = hub.user_token("erin", create=True)
        with hub.api(token) as client:
            answer = client.post("/smart/audit", json=REPORT)
        assert answer.status_code == 503, answer.text
        assert "cannot be written right now" in answer.json()["message"]
        log = hub.wait_for_log("cannot be opened (EIO")
        assert "hold no complete valid record" in log and "1,048,576" in log
        assert "audit verify" in log
    assert path.stat().st_size == size  # left as it is for the admin to examine
    assert not list(path.parent.glob("*.torn-*"))


def test_opening_a_log_with_a_huge_tail_stays_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log_with_tail(path, 64 * 1024 * 1024)
    script = (
        f"import sys\n{PEAK_KB}"
        "from jupyterhub_smart.audit import AuditLog\n"
        "before = peak_kb()\n"
        "log = AuditLog(sys.argv[1], retry_interval=60)\n"
        "print(log.healthy, peak_kb() - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    healthy, grown_kb = done.stdout.split()
    assert healthy == "False", done.stderr[-2000:]
    assert int(grown_kb) / 1024 < 16, f"opening grew memory by {int(grown_kb) / 1024:.0f} MB"
    assert "hold no complete valid record" in done.stderr
