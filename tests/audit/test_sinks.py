"""The FHIR sink: spool, retry with backoff, drain to a real sandbox once it is up."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from sandbox_process import free_port, run_sandbox

from jupyterhub_smart.audit import AuditLog
from jupyterhub_smart.audit.log import rotated_files
from jupyterhub_smart.audit.retention import compress_file
from jupyterhub_smart.audit.sinks import FHIRSink, build_sinks

from .helpers import event, wait_for

AUDIT_CLIENT = {
    "client_id": "audit-sink",
    "type": "confidential-symmetric",
    "client_secret": "audit-sink-secret-5f3c9e1a7b2d4c6e",
    "redirect_uris": ["http://127.0.0.1:9/callback"],
    "scope": "system/AuditEvent.c",
}


def sink_for(origin: str, spool: Path) -> FHIRSink:
    return FHIRSink(
        f"{origin}/fhir",
        spool,
        token_url=f"{origin}/auth/token",
        client_id=AUDIT_CLIENT["client_id"],
        client_secret=AUDIT_CLIENT["client_secret"],
        initial_backoff=0.05,
        max_backoff=0.3,
    )


def sandbox_accepts_audit_events(origin: str) -> bool:
    response = httpx.post(
        f"{origin}/fhir/AuditEvent",
        content=b"{}",
        headers={"Content-Type": "application/fhir+json"},
    )
    return response.status_code not in (404, 405)


def test_spools_while_the_server_is_down_then_drains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens here yet: connections are refused
    origin = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    sink = sink_for(origin, spool)
    log = AuditLog(tmp_path / "audit.jsonl", sinks=[sink])
    try:
        for i in range(5):
            log.record_sync(event(i))
        # Acknowledged means spooled too, whatever the server is doing.
        assert sink.pending() == 5
        wait_for(lambda: "unreachable" in caplog.text, "the sink to notice the server is down")
        assert sink.pending() == 5
        with run_sandbox(tmp_path / "sandbox", [AUDIT_CLIENT], port=port) as sandbox:
            assert sandbox_accepts_audit_events(origin), "the sandbox refuses POST /fhir/AuditEvent"
            log.record_sync(event(5))
            wait_for(lambda: sink.pending() == 0, "the spool to drain", timeout=60)
            assert not (spool / "rejected").exists()
            wait_for(
                lambda: sandbox.log_text().count("created AuditEvent") == 6,
                "the sandbox to log the six creates",
            )
            sandbox_log = sandbox.log_text()
    finally:
        log.close()
    secret = str(AUDIT_CLIENT["client_secret"])
    assert secret not in caplog.text and secret not in sandbox_log
    assert "Bearer" not in caplog.text


def test_spool_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, sinks=[sink_for(origin, spool)], max_bytes=1024)
    for i in range(3):
        log.record_sync(event(i))  # rotated at every record: the backlog spans files
    log.close()
    assert (spool / "cursor.json").exists() and not list(spool.glob("*.jsonl"))
    for rotated in rotated_files(path):  # retention compressed them meanwhile
        compress_file(rotated)
    sink = sink_for(origin, spool)
    log = AuditLog(path, sinks=[sink], max_bytes=1024)  # a new hub process, same spool
    try:
        # the receiver is still down: the whole backlog is found and nothing is lost
        assert sink.pending() == 3
        with run_sandbox(tmp_path / "sandbox", [AUDIT_CLIENT], port=port) as sandbox:
            assert sandbox_accepts_audit_events(origin), "the sandbox refuses AuditEvent"
            wait_for(lambda: sink.pending() == 0, "the backlog to drain", timeout=60)
            wait_for(
                lambda: sandbox.log_text().count("created AuditEvent") == 3,
                "the sandbox to log the three creates",
            )
    finally:
        log.close()


def test_retries_server_errors_and_refreshes_an_expired_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer's 503 and a 401 cannot be produced on demand by the sandbox: MockTransport."""
    answers = iter([503, 401, 201, 201])
    seen: list[tuple[str, str | None]] = []
    tokens = iter(["tok-one-0123456789", "tok-two-0123456789"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            assert request.headers["Authorization"].startswith("Basic ")
            return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 300})
        seen.append((request.url.path, request.headers.get("Authorization")))
        return httpx.Response(next(answers), json={"resourceType": "AuditEvent"})

    sink = FHIRSink(
        "http://fhir.test/fhir",
        tmp_path / "spool",
        token_url="http://fhir.test/auth/token",
        client_id="c",
        client_secret="s3cret-s3cret",
        initial_backoff=0.01,
        max_backoff=0.05,
        transport=httpx.MockTransport(handler),
    )
    try:
        sink.accept([_record(1), _record(2)])
        wait_for(lambda: sink.pending() == 0, "delivery after retries")
    finally:
        sink.close()
    assert [path for path, _ in seen] == ["/fhir/AuditEvent"] * 4
    assert [auth for _, auth in seen] == ["Bearer tok-one-0123456789"] * 2 + [
        "Bearer tok-two-0123456789"
    ] * 2
    assert "answered 503" in caplog.text  # then 401: same outage, not logged again
    assert "tok-one" not in caplog.text and "s3cret" not in caplog.text


def test_a_refused_resource_is_set_aside_not_retried_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    answers = iter([422, 201])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers))

    sink = FHIRSink(
        "http://fhir.test/fhir",
        tmp_path / "spool",
        initial_backoff=0.01,
        transport=httpx.MockTransport(handler),
    )
    try:
        sink.accept([_record(1), _record(2)])
        wait_for(lambda: sink.pending() == 0, "delivery")
    finally:
        sink.close()
    rejected = list((tmp_path / "spool" / "rejected").glob("*.jsonl"))
    assert len(rejected) == 1 and b'"seq","valueInteger":1' in rejected[0].read_bytes().replace(
        b'"url":', b""
    )
    assert "refused AuditEvent" in caplog.text and "422" in caplog.text


def _record(seq: int) -> dict:
    from jupyterhub_smart.audit.chain import seal

    record, _ = seal(
        {
            **event(seq),
            "log_id": "a" * 32,
            "seq": seq,
            "time": "2026-01-01T00:00:00.000000+00:00",
            "prev": "0" * 64,
        }
    )
    return record


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "kafka", "url": "http://x"}, "type must be 'fhir' or 'syslog'"),
        ({"type": "syslog", "url": "http://x"}, "tls://HOST:PORT"),
        ({"type": "syslog", "url": "tls://x", "ca_file": "/nonexistent"}, "not a readable file"),
        ({"type": "syslog", "url": "tcp://x", "password": "p"}, "unknown key(s) password"),
        ({"type": "fhir"}, "url (the FHIR base URL) is required"),
        ({"type": "fhir", "url": "http://x", "password": "p"}, "unknown key(s) password"),
        ({"type": "fhir", "url": "ftp://x"}, "http(s) URL"),
        ({"type": "fhir", "url": "http://x", "token_url": "http://x/t"}, "needs client_id"),
    ],
)
def test_sink_config_errors(tmp_path: Path, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_sinks([config], tmp_path)


def test_sink_config_reads_the_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file-secret\n")
    [sink] = build_sinks(
        [
            {
                "type": "fhir",
                "url": "http://127.0.0.1:9/fhir",
                "token_url": "http://127.0.0.1:9/auth/token",
                "client_id": "c",
                "client_secret_file": str(secret_file),
            }
        ],
        tmp_path,
    )
    try:
        assert sink.spool == tmp_path / "sink-0"
        assert "from-a-file-secret" not in repr(sink)
    finally:
        sink.close()


def test_the_sandbox_refusing_a_resource_sets_it_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with run_sandbox(tmp_path / "sandbox", [AUDIT_CLIENT]) as sandbox:
        sink = sink_for(sandbox.origin, tmp_path / "spool")
        try:
            broken = _record(1)
            del broken["agent"]  # R4 requires at least one agent: the server says 400
            sink.accept([broken, _record(2)])
            wait_for(lambda: sink.pending() == 0, "the spool to drain")
        finally:
            sink.close()
        assert sandbox.log_text().count("created AuditEvent") == 1
    [rejected] = (tmp_path / "spool" / "rejected").glob("*.jsonl")
    assert len(rejected.read_bytes().splitlines()) == 1
    assert "refused AuditEvent" in caplog.text and "400" in caplog.text
