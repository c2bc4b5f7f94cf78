"""Signed checkpoints catch a rewrite of the whole chain; retention keeps the rest verifiable.

Real files, the real writer, the real CLI; keys made by the project's own key
code (the hub's ``private_key_jwt`` kind: ES384).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from jupyterhub_smart.audit import AuditLog
from jupyterhub_smart.audit.chain import GENESIS, seal, sha256_hex
from jupyterhub_smart.audit.checkpoint import Checkpointer, checkpoints_in, sign
from jupyterhub_smart.audit.log import rotated_files
from jupyterhub_smart.audit.retention import Retention
from jupyterhub_smart.cli import main
from jupyterhub_smart.smart.keys import generate_private_key, public_jwks

from .helpers import event, lines, wait_for
from .rsyslog_process import free_port


def _keys(where: Path, name: str = "hub") -> tuple[object, Path]:
    key = generate_private_key("ES384")
    where.mkdir(parents=True, exist_ok=True)
    jwks = where / f"{name}-jwks.json"
    jwks.write_bytes(orjson.dumps(public_jwks([key])))
    return key, jwks


def _signed_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A log of 12 events with two signed checkpoints (after 5 and after 10)."""
    key, jwks = _keys(tmp_path)
    checkpoints = tmp_path / "checkpoints.jws"
    path = tmp_path / "audit.jsonl"
    keeper = Checkpointer(key, 0, checkpoints)  # type: ignore[arg-type]
    with AuditLog(path, sinks=[keeper]) as log:
        keeper.attach(log)
        for i in range(5):
            log.record_sync(event(i))
        assert keeper.checkpoint() is not None
        assert keeper.checkpoint() is None  # nothing new since: no second checkpoint
        for i in range(5, 10):
            log.record_sync(event(i))
        keeper.checkpoint()
        log.record_sync(event(10))
    return path, checkpoints, jwks


def _rewrite_whole_chain(path: Path) -> None:
    """What someone with write access can do: edit a record, recompute every hash."""
    records = [orjson.loads(line) for line in lines(path)]
    records[2]["agent"][0]["who"]["identifier"]["value"] = "someone-else"
    prev = GENESIS
    out = []
    for record in records:
        fields = {k: v for k, v in record.items() if k != "hash"}
        fields["prev"] = prev
        _, line = seal(fields)
        prev = sha256_hex(line)
        out.append(line + b"\n")
    path.write_bytes(b"".join(out))


def test_a_whole_chain_rewrite_verifies_alone_and_fails_against_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, checkpoints, jwks = _signed_log(tmp_path)
    args = ["audit", "verify", str(path), "--checkpoints", str(checkpoints), "--jwks", str(jwks)]
    assert main(args) == 0
    assert "2 signed checkpoint(s) match the log" in capsys.readouterr().out
    _rewrite_whole_chain(path)
    assert main(["audit", "verify", str(path)]) == 0  # the chain alone cannot tell
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "FAILED at seq 5" in err and "differs from the hub's signed checkpoint" in err


def test_a_cut_off_end_fails_against_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, checkpoints, jwks = _signed_log(tmp_path)
    data = lines(path)
    path.write_bytes(b"".join(data[:8]))  # the checkpoint of seq 11 and what follows gone
    assert main(["audit", "verify", str(path)]) == 0
    args = ["audit", "verify", str(path), "--checkpoints", str(checkpoints), "--jwks", str(jwks)]
    assert main(args) == 1
    assert "cut off the end" in capsys.readouterr().err


def test_checkpoints_signed_by_another_key_or_for_another_log_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, checkpoints, _ = _signed_log(tmp_path)
    _, stranger = _keys(tmp_path, "stranger")
    args = ["audit", "verify", str(path), "--checkpoints", str(checkpoints), "--jwks"]
    assert main([*args, str(stranger)]) == 1
    assert "none of the 2 checkpoint(s) is signed by a key of" in capsys.readouterr().err
    # a checkpoint that names the hub's key but carries another signature is refused
    header, payload, _ = checkpoints.read_text().splitlines()[0].split(".")
    _, _, signature = sign_other(tmp_path).split(".")
    forged = tmp_path / "forged.jws"
    forged.write_text(f"{header}.{payload}.{signature}\n")
    jwks = tmp_path / "hub-jwks.json"
    assert main([*args[:4], str(forged), "--jwks", str(jwks)]) == 1
    assert "signature does not verify" in capsys.readouterr().err
    other_path, other_checkpoints, other_jwks = _signed_log(tmp_path / "other")
    assert (
        main([*args[:3], "--checkpoints", str(other_checkpoints), "--jwks", str(other_jwks)]) == 1
    )
    assert "none of the 2 signed checkpoint(s) is for this log" in capsys.readouterr().err
    assert other_path.exists()


def sign_other(where: Path) -> str:
    """A checkpoint signed by a key that is not the hub's."""
    other = generate_private_key("ES384")
    return sign(other, log_id="0" * 32, seq=1, hash="0" * 64, time="2026-01-01T00:00:00+00:00")


def test_checkpoint_sources_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, checkpoints, jwks = _signed_log(tmp_path)
    # the trail's own copy (as a SIEM or FHIR server holds it) carries the checkpoints too
    assert len(checkpoints_in(path.read_text())) == 2
    assert checkpoints_in(path.read_text()) == checkpoints_in(checkpoints.read_text())
    assert main(["audit", "verify", str(path), "--checkpoints", str(checkpoints)]) == 2
    assert "needs --jwks" in capsys.readouterr().err
    assert (
        main(["audit", "verify", str(path), "--checkpoints", str(jwks), "--jwks", str(jwks)]) == 2
    )
    assert "no checkpoints found" in capsys.readouterr().err
    missing = str(tmp_path / "nope.json")
    assert main(["audit", "verify", str(path), "--checkpoints", missing, "--jwks", str(jwks)]) == 2
    # over HTTP, as a SIEM export or the hub's own jwks.json would be fetched
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _serving(base), "the HTTP server")
        args = ["--checkpoints", f"{base}/{checkpoints.name}", "--jwks", f"{base}/{jwks.name}"]
        assert main(["audit", "verify", str(path), *args]) == 0
        assert main(["audit", "verify", str(path), "--checkpoints", f"{base}/x", *args[2:]]) == 2
        assert "HTTP 404" in capsys.readouterr().err
    finally:
        server.terminate()
        server.wait()


def _serving(base: str) -> bool:
    import httpx

    try:
        return httpx.get(base + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_retention_compresses_deletes_and_the_rest_verifies_from_a_signed_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, jwks = _keys(tmp_path)
    checkpoints = tmp_path / "checkpoints.jws"
    path = tmp_path / "audit.jsonl"
    keeper = Checkpointer(key, 0, checkpoints)  # type: ignore[arg-type]
    keep = Retention(compress=True, max_bytes=12_000, checkpointer=keeper)
    with AuditLog(path, max_bytes=4096, sinks=[keeper, keep], on_rotate=keep.rotated) as log:
        keeper.attach(log)
        keep.attach(log)
        for i in range(60):
            log.record_sync(event(i))
        assert keep.wait_idle()
        rotated = rotated_files(path)
        assert rotated and all(f.name.endswith(".gz") for f in rotated)
        first_kept = int(rotated[0].name.split(".")[-2])
        assert first_kept > 1  # the oldest files are gone
        log.record_sync(event(99))
    # the deletion is on the trail: the event is in the active file or a retained one
    texts = [path.read_bytes()] + [gzip.decompress(f.read_bytes()) for f in rotated_files(path)]
    retention = [
        orjson.loads(raw)
        for text in texts
        for raw in text.splitlines()
        if b"audit-retention" in raw
    ]
    assert retention and "deleted" in retention[0]["outcomeDesc"]
    assert main(["audit", "verify", str(path)]) == 1  # no anchor: starts after seq 1
    assert "verify with --checkpoints and --jwks" in capsys.readouterr().err
    args = ["--checkpoints", str(checkpoints), "--jwks", str(jwks)]
    assert main(["audit", "verify", str(path), *args]) == 0
    out = capsys.readouterr().out
    assert f"seq {first_kept}.." in out and "deleted by retention" in out
    # a retained file that is tampered with still fails, compressed or not
    victim = rotated_files(path)[0]
    data = gzip.decompress(victim.read_bytes()).replace(b"user", b"usex", 1)
    victim.write_bytes(gzip.compress(data))
    assert main(["audit", "verify", str(path), *args]) == 1


def test_retention_without_a_signing_key_deletes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    keep = Retention(compress=False, max_age_days=0.000001)
    with AuditLog(path, max_bytes=4096, sinks=[keep], on_rotate=keep.rotated) as log:
        keep.attach(log)
        for i in range(30):
            log.record_sync(event(i))
        time.sleep(0.2)  # older than the (tiny) maximum age
        keep.rotated(path)
        assert keep.wait_idle()
    assert "past retention but are kept" in caplog.text
    assert rotated_files(path)[0].name.endswith(".000000000001")
    assert main(["audit", "verify", str(path)]) == 0


def test_a_compression_cut_short_leaves_a_readable_log(tmp_path: Path) -> None:
    """Both forms of a rotated file (the crash came after the rename): the plain one counts."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=4096) as log:
        for i in range(30):
            log.record_sync(event(i))
    first = rotated_files(path)[0]
    twin = first.with_name(first.name + ".gz")
    twin.write_bytes(gzip.compress(first.read_bytes()))
    assert rotated_files(path)[0] == first
    assert main(["audit", "verify", str(path)]) == 0
    assert main(["audit", "verify", str(tmp_path)]) == 0
    first.unlink()
    assert rotated_files(path)[0] == twin
    assert main(["audit", "verify", str(path)]) == 0
    with AuditLog(path) as log:  # the writer finds its head through compressed files too
        assert log.record_sync(event(99)) == 31


def test_retention_keeps_what_a_sink_has_not_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink reads its backlog from the log: retention waits for it before deleting."""
    from jupyterhub_smart.audit import SyslogSink

    key, _ = _keys(tmp_path)
    path = tmp_path / "audit.jsonl"
    keeper = Checkpointer(key, 0, tmp_path / "checkpoints.jws")  # type: ignore[arg-type]
    keep = Retention(compress=False, max_bytes=1, checkpointer=keeper)
    down = SyslogSink(f"tcp://127.0.0.1:{free_port()}", tmp_path / "spool")  # nobody listens
    with AuditLog(path, max_bytes=4096, sinks=[down, keeper, keep], on_rotate=keep.rotated) as log:
        keeper.attach(log)
        keep.attach(log)
        for i in range(20):
            log.record_sync(event(i))
        assert keep.wait_idle()
        assert rotated_files(path)[0].name.endswith(".000000000001")  # nothing deleted
        assert "kept until every sink has delivered it" in caplog.text
        assert down.pending() == 20
