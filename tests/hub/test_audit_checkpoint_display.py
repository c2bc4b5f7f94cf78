"""What the audit page shows of the last signed checkpoint: the claims, read from its file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from jupyterhub_smart.hub.audit_page import _last_checkpoint


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
