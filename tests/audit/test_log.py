"""The writer: chain, concurrency, rotation, torn tails, locking, failing disks."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import orjson
import pytest

from jupyterhub_smart.audit import AuditBacklogFull, AuditLog, AuditUnavailable, hub_event
from jupyterhub_smart.audit.chain import GENESIS, parse_line, sha256_hex
from jupyterhub_smart.audit.verify import verify

from .helpers import can_mount, event, fill, lines, records, remount, tmpfs, wait_for


def test_record_returns_seq_and_chains_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        assert [log.record_sync(event(i)) for i in range(3)] == [1, 2, 3]
        assert log.head[0] == 3
    raw = lines(path)
    recs = [parse_line(line.rstrip(b"\n")) for line in raw]
    assert recs[0]["prev"] == GENESIS
    assert recs[1]["prev"] == sha256_hex(raw[0].rstrip(b"\n"))
    assert recs[2]["prev"] == sha256_hex(raw[1].rstrip(b"\n"))
    assert len({r["log_id"] for r in recs}) == 1 and len(recs[0]["log_id"]) == 32
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # patient references: owner only
    assert verify([path]).head_seq == 3


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record_sync(event(1))
        first_id = log.log_id
    with AuditLog(path) as log:
        assert log.log_id == first_id
        assert log.record_sync(event(2)) == 2
    assert verify([path]).records == 2


def test_many_tasks_and_threads_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(50):
            seq = log.record_sync(event(n * 1000 + i))
            with lock:
                seqs.append(seq)

    async def tasks() -> list[int]:
        return list(await asyncio.gather(*(log.record(event(i)) for i in range(400))))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    task_seqs = asyncio.run(tasks())
    for t in threads:
        t.join()
    asyncio.run(log.aclose())
    everything = seqs + task_seqs
    assert sorted(everything) == list(range(1, 801))
    report = verify([path])
    assert report.records == 800
    # Group commit: one line per event, no interleaving inside a line.
    assert len(lines(path)) == 800


def test_rotation_continues_the_chain_into_the_next_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=4096) as log:
        for i in range(40):
            log.record_sync(event(i))
    rotated = sorted(tmp_path.glob("audit.jsonl.*[0-9]"))
    assert len(rotated) >= 3
    firsts = [records(f)[0]["seq"] for f in rotated]
    assert [f.name for f in rotated] == [f"audit.jsonl.{s:012d}" for s in firsts]
    assert all(f.stat().st_size <= 4096 for f in rotated)
    # The active file's first line chains to the last rotated file's last line.
    assert records(path)[0]["prev"] == sha256_hex(lines(rotated[-1])[-1].rstrip(b"\n"))
    report = verify([path])  # the active file pulls in its rotated siblings
    assert report.records == 40 and len(report.files) == len(rotated) + 1
    # Reopening after rotation continues from the head.
    with AuditLog(path, max_bytes=4096) as log:
        assert log.record_sync(event(99)) == 41
    assert verify([tmp_path]).records == 41


def test_reopen_when_active_file_is_gone_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2048) as log:
        for i in range(10):
            log.record_sync(event(i))
    # Crash between the rename and the first write of the new active file.
    rotated = sorted(tmp_path.glob("audit.jsonl.*[0-9]"))
    os.rename(path, rotated[-1].with_name(f"audit.jsonl.{records(path)[0]['seq']:012d}"))
    with AuditLog(path, max_bytes=2048) as log:
        assert log.record_sync(event(10)) == 11
    assert verify([path]).records == 11


def test_torn_tail_is_set_aside_and_chain_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(3):
            log.record_sync(event(i))
    good = path.read_bytes()
    torn = lines(path)[-1][:57]  # a write cut short by a crash
    with path.open("ab") as out:
        out.write(torn)
    caplog.set_level(logging.INFO, logger="jupyterhub_smart.audit")
    with AuditLog(path) as log:
        assert log.record_sync(event(3)) == 5  # seq 4 records the recovery itself
    aside = list(tmp_path.glob("audit.jsonl.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    assert path.read_bytes().startswith(good)
    assert any(
        r.levelno == logging.WARNING and "torn" in r.getMessage() and "seq 3" in r.getMessage()
        for r in caplog.records
    )
    recs = records(path)
    assert recs[3]["subtype"][0]["code"] == "audit-recovered"
    assert "57 bytes" in recs[3]["outcomeDesc"]
    assert verify([path]).records == 5


def test_invalid_last_line_is_also_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record_sync(event(0))
    with path.open("ab") as out:
        out.write(b"\x00" * 100 + b"\n")  # e.g. zeros after a power loss
    with AuditLog(path) as log:
        assert log.record_sync(event(1)) == 3
    assert verify([path]).records == 3


def test_second_writer_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as first:
        first.record_sync(event(0))
        second = AuditLog(path, retry_interval=60)
        try:
            assert not second.healthy
            with pytest.raises(AuditUnavailable):
                second.record_sync(event(1))
        finally:
            second.close()
        assert first.record_sync(event(2)) == 2
    assert "another writer holds the audit log" in caplog.text
    assert verify([path]).records == 2


def test_bad_events_are_refused_with_a_reason(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log:
        with pytest.raises(ValueError, match="unknown audit event field"):
            log.record_sync({"type": {}, "seq": 5})
        with pytest.raises(ValueError, match="mapping"):
            log.record_sync(["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unsupported type"):
            log.record_sync({"outcomeDesc": object()})
        assert log.record_sync(event(0)) == 1


def test_credentials_never_reach_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    jwt = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
    opaque = "opaque-refresh-4f9a8b7c6d5e"
    with AuditLog(path) as log:
        ev = hub_event("refresh-failed", outcome="failure", description=f"bad token {jwt}")
        ev["entity"] = [{"detail": [{"type": "refresh_token", "valueString": opaque}]}]
        ev["agent"][0]["access_token"] = opaque
        ev["agent"][0]["who"]["display"] = f"Authorization: Bearer {opaque}xxxxxxxx"
        log.record_sync(ev)
        log.record_sync(hub_event("login-failed", description="callback ?code=SplxlOBeZQ&state=x"))
    text = path.read_text()
    for secret in (jwt, opaque, "SplxlOBeZQ"):
        assert secret not in text
        assert secret not in caplog.text
    assert text.count("[redacted]") == 5
    assert "agent[0].access_token" in caplog.text  # the path is named, never the value
    assert verify([path]).records == 2


needs_root = pytest.mark.skipif(not can_mount(), reason="mounting a tiny tmpfs needs root")


@needs_root
def test_disk_full_fails_loudly_holds_events_and_writes_them_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        path = disk / "audit.jsonl"
        log = AuditLog(path, retry_interval=0.05, max_retry_interval=0.2)
        try:
            assert log.record_sync(event(0)) == 1
            filler = fill(disk)
            # The file's last page may still hold a few lines; then the disk refuses.
            written = 1
            with pytest.raises(AuditUnavailable, match="ENOSPC"):
                for i in range(1, 100):
                    log.record_sync(event(i))
                    written += 1
            failed_at = written  # index of the event that was refused
            assert written < 99
            with pytest.raises(AuditUnavailable):
                asyncio.run(log.record(event(failed_at + 1)))
            assert not log.healthy
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert errors and "not writable" in errors[0].getMessage()
            # No half-written line was left behind by the failed write.
            assert all(line.endswith(b"\n") for line in lines(path))
            assert len(lines(path)) == written
            filler.unlink()
            total = failed_at + 2
            wait_for(lambda: log.healthy and log.head[0] == total, "the held events to be written")
            assert log.record_sync(event(total)) == total + 1
        finally:
            log.close()
        recs = records(path)
        assert [r["agent"][0]["altId"] for r in recs] == [f"user{i}" for i in range(total + 1)]
        assert recs[failed_at]["deferred"]["error"] == "ENOSPC"
        assert "deferred" not in recs[-1] and "deferred" not in recs[0]
        assert verify([path]).deferred == 2


@needs_root
def test_read_only_disk_keeps_running_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        path = disk / "audit.jsonl"
        with AuditLog(path) as log:
            log.record_sync(event(0))
        remount(disk, "ro")
        log = AuditLog(path, retry_interval=0.05, max_retry_interval=0.2, max_backlog=3)
        try:
            assert not log.healthy
            assert "cannot be opened (EROFS" in caplog.text
            for i in range(3):
                with pytest.raises(AuditUnavailable, match="EROFS"):
                    log.record_sync(event(i + 1))
            with pytest.raises(AuditBacklogFull):
                log.record_sync(event(9))
            assert "backlog full" in caplog.text
            remount(disk, "rw")
            wait_for(lambda: log.healthy and log.head[0] == 4, "the held events to be written")
        finally:
            log.close()
        assert [r["agent"][0]["altId"] for r in records(path)] == [f"user{i}" for i in range(4)]
        assert verify([path]).records == 4


def test_read_only_directory_without_root(tmp_path: Path) -> None:
    """Unprivileged variant: a directory the hub cannot write to."""
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the tmpfs tests cover this")
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        log = AuditLog(directory / "audit.jsonl", retry_interval=60)
        with pytest.raises(AuditUnavailable):
            log.record_sync(event(0))
        log.close()
    finally:
        directory.chmod(0o755)


def test_lines_are_canonical_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record_sync(event(0))
    line = lines(path)[0].rstrip(b"\n")
    assert orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS) == line


def test_a_large_invalid_tail_is_found_across_read_chunks(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(3):
            log.record_sync(event(i))
    good_size = path.stat().st_size
    garbage = (b"g" * 999 + b"\n") * 200 + b"partial"  # 200 KB: several 64 KiB chunks
    with path.open("ab") as out:
        out.write(garbage)
    AuditLog(path).close()  # recovery, then the audit-recovered event (seq 4) is written
    [aside] = tmp_path.glob("audit.jsonl.torn-*")
    assert aside.read_bytes() == garbage
    assert path.read_bytes()[:good_size] == lines(path)[0] + lines(path)[1] + lines(path)[2]
    assert verify([path]).records == 4


def test_a_line_longer_than_a_read_chunk(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    big = hub_event("login-succeeded", username="alice")
    big["entity"] = [{"what": {"reference": f"Patient/{i}"}} for i in range(3000)]
    with AuditLog(path) as log:
        log.record_sync(big)
    assert path.stat().st_size > 64 * 1024
    with AuditLog(path) as log:
        assert log.record_sync(event(1)) == 2
    assert verify([path]).records == 2


@needs_root
def test_policy_fails_closed_only_for_access(tmp_path: Path) -> None:
    from jupyterhub_smart.audit.policy import record_or_refuse

    with tmpfs(tmp_path / "disk", size="1m") as disk:
        path = disk / "audit.jsonl"
        AuditLog(path).close()
        remount(disk, "ro")
        log = AuditLog(path, retry_interval=60)
        try:

            async def attempts() -> None:
                with pytest.raises(AuditUnavailable):
                    await record_or_refuse(log, hub_event("token-issued", username="a"))
                assert await record_or_refuse(log, hub_event("logout", username="a")) is None

            asyncio.run(attempts())
        finally:
            remount(disk, "rw")
            log.close()


@needs_root
def test_a_sink_misses_nothing_when_the_log_opens_late(tmp_path: Path) -> None:
    """The disk was read-only at start: the sink's cursor starts where the log then was."""
    from jupyterhub_smart.audit import SyslogSink

    from .rsyslog_process import free_port

    with tmpfs(tmp_path / "disk", size="1m") as disk:
        path = disk / "audit.jsonl"
        with AuditLog(path) as log:
            log.record_sync(event(0))
        remount(disk, "ro")
        sink = SyslogSink(f"tcp://127.0.0.1:{free_port()}", tmp_path / "spool")  # down
        log = AuditLog(path, sinks=[sink], retry_interval=0.05, max_retry_interval=0.2)
        try:
            assert not log.healthy
            with pytest.raises(AuditUnavailable):
                log.record_sync(event(1))
            remount(disk, "rw")
            wait_for(lambda: log.healthy and log.head[0] == 2, "the held event to be written")
            log.record_sync(event(2))
            assert sink.pending() == 2  # both events written after the late open, none lost
        finally:
            log.close()
