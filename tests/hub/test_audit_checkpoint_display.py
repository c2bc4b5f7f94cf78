"""What the audit page shows of the last signed checkpoint: its claims, from a file or the trail."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from jupyterhub_smart.audit import AuditLog, hub_event
from jupyterhub_smart.audit.events import ACTION_SYSTEM
from jupyterhub_smart.audit.index import AuditIndex
from jupyterhub_smart.hub.audit_page import _checkpoint_in_trail, _last_checkpoint


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_the_last_line_of_a_checkpoint_file_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jws"
    assert _last_checkpoint(str(path)) is None  # not written yet: "none"
    path.write_text("")
    assert _last_checkpoint(str(path)) is None
    older = {"seq": 10, "hash": "ab" * 32, "time": "2026-03-01T09:00:00+00:00"}
    newer = {"seq": 20, "hash": "cd" * 32, "time": "2026-03-01T10:00:00+00:00", "x": 1}
    path.write_text(
        f"{b64({'alg': 'ES384'})}.{b64(older)}.c2ln\n{b64({'alg': 'ES384'})}.{b64(newer)}.c2ln\n"
    )
    assert _last_checkpoint(str(path)) == {k: newer[k] for k in ("seq", "hash", "time")}
    path.write_text(json.dumps({"payload": b64(older), "signatures": []}) + "\n")
    assert _last_checkpoint(str(path)) == older
    path.write_text(json.dumps(newer) + "\n")
    assert _last_checkpoint(str(path))["seq"] == 20  # type: ignore[index]
    path.write_text("not.a-checkpoint.at-all\n")
    assert _last_checkpoint(str(path)) == {"error": "the last checkpoint could not be read"}


def test_the_newest_checkpoint_recorded_in_the_trail_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    claims = {"log_id": "x", "seq": 1, "hash": "ef" * 32, "time": "2026-03-01T11:00:00+00:00"}
    with AuditLog(path) as log:
        log.record_sync(hub_event("login-succeeded", username="doc"))
        with AuditIndex(path) as index:
            index.update()
            assert _checkpoint_in_trail(index) is None
        event = dict(hub_event("audit-recovered", description="checkpoint"))
        event["subtype"] = [{"system": ACTION_SYSTEM, "code": "audit-checkpoint"}]
        parts = (b64({"alg": "ES384"}), b64(claims), "c2ln")
        event["entity"] = [
            {
                "detail": [
                    {"type": name, "valueString": part}
                    for name, part in zip(
                        ("jws-protected", "jws-payload", "jws-signature"), parts, strict=True
                    )
                ]
            }
        ]
        log.record_sync(event)
    with AuditIndex(path) as index:
        index.update()
        assert _checkpoint_in_trail(index) == {
            "seq": 1,
            "hash": "ef" * 32,
            "time": claims["time"],
            "record": 2,
        }
