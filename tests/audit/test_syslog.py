"""The ATNA syslog sink against a real Debian rsyslog on loopback (TLS, TCP, UDP).

One private rsyslogd per module (tests/audit/rsyslog_process.py) with
certificates made here. Each test writes through its own AuditLog, so its
messages are told apart by the log id in every AuditEvent id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from pki import make_pki

from jupyterhub_smart.audit import AuditLog, SyslogSink, build_sinks, data_access_event, hub_event
from jupyterhub_smart.audit.checkpoint import Checkpointer
from jupyterhub_smart.audit.events import ACTION_SYSTEM
from jupyterhub_smart.audit.syslog import format_message, severity
from jupyterhub_smart.audit.verify import verify
from jupyterhub_smart.cli import main
from jupyterhub_smart.smart.keys import generate_private_key, public_jwks

from . import rsyslog_process
from .helpers import event, wait_for

pytestmark = pytest.mark.skipif(
    not rsyslog_process.available(),
    reason="rsyslog + rsyslog-gnutls not installed (`make test` installs them as root)",
)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rsyslog_process.Rsyslog]:
    where = tmp_path_factory.mktemp("rsyslog")
    server = rsyslog_process.Rsyslog(where, make_pki(where / "pki"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def up(receiver: rsyslog_process.Rsyslog) -> rsyslog_process.Rsyslog:
    """The receiver, running (a test that stopped it restarts it itself, or this does)."""
    if receiver.process is None:
        receiver.start()
    return receiver


def _tls_sink(receiver: rsyslog_process.Rsyslog, spool: Path, **kw: Any) -> SyslogSink:
    pki = receiver.pki
    options: dict[str, Any] = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "server_name": "localhost",
        "initial_backoff": 0.05,
        "max_backoff": 0.2,
        **kw,
    }
    return SyslogSink(f"tls://127.0.0.1:{receiver.tls_port}", spool, **options)


def _received(receiver: rsyslog_process.Rsyslog, log_id: str) -> list[tuple[list[str], dict]]:
    """(severity, facility, msgid, app) and the AuditEvent of each message of one log."""
    out = []
    for line in receiver.lines():
        head = line.split(" ", 4)
        if len(head) == 5 and f'"{log_id}-' in head[4]:
            out.append((head[:4], orjson.loads(head[4].lstrip("\ufeff"))))
    return out


def _seqs(received: list[tuple[list[str], dict]]) -> list[int]:
    return [int(resource["id"].rsplit("-", 1)[1]) for _, resource in received]


def _alert() -> dict[str, Any]:
    alert = dict(hub_event("issuer-refused", outcome="failure", username="mallory"))
    alert["subtype"] = [{"system": ACTION_SYSTEM, "code": "alert-many-patients"}]
    return alert


def test_mutual_tls_delivers_balp_events_in_order_with_severity(
    up: rsyslog_process.Rsyslog, tmp_path: Path
) -> None:
    sink = _tls_sink(up, tmp_path / "spool")
    with AuditLog(tmp_path / "audit.jsonl", sinks=[sink]) as log:
        for i in range(5):
            log.record_sync(event(i))
        log.record_sync(hub_event("login-failed", outcome="failure", username="eve"))
        log.record_sync(_alert())
        log.record_sync(
            data_access_event(
                interaction="read",
                resource_type="Observation",
                resource_id="o1",
                status=200,
                patient="Patient/p1",
                issuer="https://ehr.example/fhir",
                username="alice",
                server_name="",
                client_address="10.0.0.8",
            )
        )
        log_id = log.log_id
        wait_for(lambda: len(_received(up, log_id)) == 8, "all 8 messages at rsyslog")
    received = _received(up, log_id)
    assert _seqs(received) == list(range(1, 9))
    assert {tuple(h[1:]) for h, _ in received} == {("10", "IHE+FHIR", "jupyterhub-smart")}
    assert [h[0] for h, _ in received] == ["5"] * 5 + ["4", "1", "5"]
    for _, resource in received:
        AuditEvent.model_validate(resource)
    assert received[-1][1]["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    ]
    assert sink.pending() == 0


@pytest.mark.slow
def test_receiver_down_then_up_loses_nothing_and_keeps_order(
    up: rsyslog_process.Rsyslog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spool = tmp_path / "spool"
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, sinks=[_tls_sink(up, spool)])
    for i in range(3):
        log.record_sync(event(i))
    log_id = log.log_id
    wait_for(lambda: len(_received(up, log_id)) == 3, "the first 3 messages at rsyslog")
    up.stop()
    try:
        for i in range(3, 8):
            log.record_sync(event(i))  # durable in the log, not at the receiver
        wait_for(lambda: "unreachable" in caplog.text, "the sink to notice the receiver is down")
        assert log.sinks[0].pending() == 5  # type: ignore[attr-defined]
        log.close()  # the hub stops while the receiver is down: the cursor stays behind
        assert (spool / "cursor.json").exists()
        log = AuditLog(path, sinks=[_tls_sink(up, spool)])  # a new hub process, same spool
        log.record_sync(event(8))
    finally:
        up.start()
    wait_for(lambda: len(_received(up, log_id)) >= 9, "the spool delivered after the restart")
    log.record_sync(event(9))
    wait_for(lambda: len(_received(up, log_id)) >= 10, "a new event after the backlog")
    log.close()
    seqs = _seqs(_received(up, log_id))
    assert list(dict.fromkeys(seqs)) == list(range(1, 11))  # all there, in order
    assert "reachable again" in caplog.text


def test_a_receiver_certificate_from_an_unknown_ca_is_refused(
    up: rsyslog_process.Rsyslog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sink = _tls_sink(up, tmp_path / "spool", ca_file=str(up.pki.stranger_ca))
    with AuditLog(tmp_path / "audit.jsonl", sinks=[sink]) as log:
        log.record_sync(event(1))
        log.record_sync(event(2))
        wait_for(lambda: "certificate was refused" in caplog.text, "the refusal to be logged")
        assert sink.pending() == 2
        log_id = log.log_id
    assert _received(up, log_id) == []
    assert sink.pending() == 2  # kept for when the configuration is fixed


def test_a_client_certificate_the_receiver_does_not_trust_delivers_nothing(
    up: rsyslog_process.Rsyslog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pki = up.pki
    sink = _tls_sink(
        up, tmp_path / "spool", cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key)
    )
    with AuditLog(tmp_path / "audit.jsonl", sinks=[sink]) as log:
        log.record_sync(event(1))
        wait_for(lambda: "unreachable" in caplog.text, "the refused connection to be logged")
        log_id = log.log_id
    assert sink.pending() == 1  # the hung-up connection swallowed nothing
    assert _received(up, log_id) == []


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_plain_tcp_and_udp_for_a_lab(
    up: rsyslog_process.Rsyslog, tmp_path: Path, transport: str
) -> None:
    port = up.tcp_port if transport == "tcp" else up.udp_port
    [sink] = build_sinks(
        [{"type": "syslog", "url": f"{transport}://127.0.0.1:{port}"}],
        tmp_path,
    )
    with AuditLog(tmp_path / "audit.jsonl", sinks=[sink]) as log:
        for i in range(3):
            log.record_sync(event(i))
        log_id = log.log_id
        # closing the log stops the sender: what it has not sent stays spooled
        wait_for(lambda: len(_received(up, log_id)) == 3, f"3 messages over {transport}")
    assert _seqs(_received(up, log_id)) == [1, 2, 3]


def test_message_format_and_severity() -> None:
    resource = {"resourceType": "AuditEvent", "outcome": "0", "type": {"code": "rest"}}
    message = format_message(resource, "2026-01-02T03:04:05.000006+00:00", hostname="hub 1")
    assert message.startswith(b"<85>1 2026-01-02T03:04:05.000006+00:00 hub1 jupyterhub-smart ")
    assert b" IHE+FHIR - \xef\xbb\xbf{" in message and b"\n" not in message
    assert severity({"outcome": "8"}) == 3
    alert = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113"}
    assert severity({"outcome": "0", "type": alert}) == 4
    assert severity({"outcome": "0", "subtype": [{"code": "alert-x"}]}) == 1


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("https://x", {}, "tls://HOST:PORT"),
        ("tcp://x:1", {"ca_file": "/etc/hostname"}, "need a tls:// url"),
        ("tls://x:1", {"cert_file": "/etc/hostname"}, "needs both cert_file and key_file"),
        ("tls://x:1", {"ca_file": "/nonexistent.pem"}, "not a readable file"),
        ("udp://x:1", {"facility": 24}, "facility must be 0..23"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(
    tmp_path: Path, url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        SyslogSink(url, tmp_path, **options)


def test_a_spool_in_the_log_directory_never_sends_or_deletes_the_log(
    up: rsyslog_process.Rsyslog, tmp_path: Path
) -> None:
    """Only the spool's own batch files are sent: the log beside them is not a spool file."""
    sink = SyslogSink(f"tcp://127.0.0.1:{up.tcp_port}", tmp_path, initial_backoff=0.05)
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, sinks=[sink]) as log:
        for i in range(3):
            log.record_sync(event(i))
        log_id = log.log_id
        wait_for(lambda: sink.pending() == 0, "the spool to drain")
    assert verify([path]).head_seq == 3
    wait_for(lambda: len(_received(up, log_id)) == 3, "3 messages")
    assert all(h[2] == "IHE+FHIR" for h, _ in _received(up, log_id))


def test_checkpoints_reach_the_siem_and_verify_from_its_copy(
    up: rsyslog_process.Rsyslog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signed checkpoint goes to every sink; the SIEM's copy serves `verify --checkpoints`."""
    key = generate_private_key("ES384")
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps(public_jwks([key])))
    keeper = Checkpointer(key, 0)
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, sinks=[_tls_sink(up, tmp_path / "spool"), keeper]) as log:
        keeper.attach(log)
        for i in range(3):
            log.record_sync(event(i))
        keeper.checkpoint()
        log_id = log.log_id
        wait_for(lambda: len(_received(up, log_id)) == 4, "the events and the checkpoint")
    # the receiver's file holds other tests' logs and checkpoints too: only ours count
    args = ["audit", "verify", str(path), "--checkpoints", str(up.output), "--jwks", str(jwks)]
    assert main(args) == 0
    assert "1 signed checkpoint(s) match the log" in capsys.readouterr().out
