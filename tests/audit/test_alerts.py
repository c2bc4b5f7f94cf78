"""The alert rules, one record at a time, and the sink that records what fires."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event
from jupyterhub_smart.audit.alerts import AlertRules, AlertSink, Evaluator, Webhook

from .helpers import records, wait_for

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


def at(event: dict, minutes: float) -> dict[str, Any]:
    """An event as the log writes it: with its time (the rules read only what is logged)."""
    return {**event, "time": (T0 + timedelta(minutes=minutes)).isoformat()}


def login(user: str, address: str, patient: str | None = None, scopes: str = "patient/*.rs"):  # type: ignore[no-untyped-def]
    return hub_event(
        "login-succeeded",
        username=user,
        patient=patient,
        client_address=address,
        scopes_granted=scopes.split(),
    )


def read(user: str, patient: str, status: int = 200) -> dict:
    return data_access_event(
        interaction="read",
        resource_type="Observation",
        status=status,
        username=user,
        patient=patient,
    )


def kinds(alerts: list) -> list[str]:  # type: ignore[type-arg]
    return [a.action for a in alerts]


def test_distinct_patients_within_the_window() -> None:
    rules = Evaluator(AlertRules(patient_limit=2, patient_window=600))
    assert kinds(rules.evaluate(at(read("u", "Patient/1"), 0))) == []
    assert kinds(rules.evaluate(at(read("u", "Patient/1"), 1))) == []  # same patient again
    assert kinds(rules.evaluate(at(read("u", "Patient/2"), 2))) == []
    assert kinds(rules.evaluate(at(read("u", "Patient/3"), 3))) == ["alert-patient-spread"]
    assert kinds(rules.evaluate(at(read("u", "Patient/4"), 4))) == []  # quiet for the window
    assert kinds(rules.evaluate(at(read("v", "Patient/9"), 4))) == []  # per user
    # Past the window the old patients no longer count.
    assert kinds(rules.evaluate(at(read("w", "Patient/1"), 0))) == []
    assert kinds(rules.evaluate(at(read("w", "Patient/2"), 1))) == []
    assert kinds(rules.evaluate(at(read("w", "Patient/3"), 20))) == []
    refused = Evaluator(AlertRules(patient_limit=1))
    assert kinds(refused.evaluate(at(read("u", "Patient/1", status=403), 0))) == []
    assert kinds(refused.evaluate(at(read("u", "Patient/2", status=403), 0))) == []


def test_out_of_context_only_with_user_level_scopes() -> None:
    rules = Evaluator(AlertRules(patient_limit=0))
    rules.evaluate(at(login("doc", "10.0.0.1", "Patient/a", "launch user/*.rs"), 0))
    assert kinds(rules.evaluate(at(read("doc", "Patient/a"), 1))) == []
    [alert] = rules.evaluate(at(read("doc", "Patient/b"), 2))
    assert alert.action == "alert-out-of-context" and alert.patient == "Patient/b"
    assert "Patient/a" in alert.description
    rules.evaluate(at(login("nurse", "10.0.0.2", "Patient/a", "launch patient/*.rs"), 0))
    assert kinds(rules.evaluate(at(read("nurse", "Patient/b"), 1))) == []  # EHR-enforced
    assert kinds(rules.evaluate(at(read("stranger", "Patient/b"), 1))) == []  # no launch seen


def test_refused_tokens_and_new_addresses() -> None:
    rules = Evaluator(AlertRules(patient_limit=0, refused_limit=3, refused_window=60))
    failed = hub_event("refresh-failed", outcome="failure", username="doc")
    assert kinds(rules.evaluate(at(failed, 0))) == []
    assert kinds(rules.evaluate(at(read("doc", "Patient/1", status=401), 0.5))) == []
    assert kinds(rules.evaluate(at(failed, 5))) == []  # the first two are out of the window
    assert kinds(rules.evaluate(at(failed, 5.1))) == []
    assert kinds(rules.evaluate(at(failed, 5.2))) == ["alert-refused-tokens"]

    assert kinds(rules.evaluate(at(login("doc", "10.0.0.1"), 0))) == []  # the baseline
    assert kinds(rules.evaluate(at(login("doc", "10.0.0.1"), 1))) == []
    [alert] = rules.evaluate(at(login("doc", "192.0.2.7"), 2))
    assert alert.action == "alert-new-address" and alert.client_address == "192.0.2.7"
    assert "10.0.0.1" in alert.description
    off = Evaluator(AlertRules(new_address=False))
    off.evaluate(at(login("doc", "10.0.0.1"), 0))
    assert kinds(off.evaluate(at(login("doc", "192.0.2.7"), 1))) == []


def test_the_sink_records_alerts_in_the_log_and_alerts_set_off_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AlertSink(AlertRules(patient_limit=1))
    with AuditLog(path, sinks=[sink]) as log:
        sink.attach(log)
        log.record_sync(read("doc", "Patient/1"))
        log.record_sync(read("doc", "Patient/2"))
        wait_for(lambda: len(records(path)) == 3, "the alert record")
        log.record_sync(read("doc", "Patient/3"))
    actions = [r["subtype"][0]["code"] for r in records(path)]
    assert actions == ["data-access", "data-access", "alert-patient-spread", "data-access"]
    alert = records(path)[2]
    assert alert["agent"][0]["altId"] == "doc" and alert["type"]["code"] == "110113"


def test_the_rules_remember_across_a_restart(tmp_path: Path) -> None:
    """A new hub process knows the addresses and patients seen before it started."""
    path = tmp_path / "audit.jsonl"
    rules = AlertRules(patient_limit=2, patient_window=3600)

    def start() -> tuple[AuditLog, AlertSink]:
        sink = AlertSink(rules)
        audit_log = AuditLog(path, sinks=[sink])
        sink.attach(audit_log)
        return audit_log, sink

    audit_log, _ = start()
    audit_log.record_sync(login("ann", "10.0.0.1"))
    audit_log.record_sync(read("ann", "Patient/1"))
    audit_log.close()  # a clean stop writes the state
    state = tmp_path / "audit.jsonl.alerts.json"
    older = state.read_bytes()
    audit_log, _ = start()
    audit_log.record_sync(read("ann", "Patient/2"))
    audit_log.close()
    state.write_bytes(older)  # as after a crash: the state predates the last record
    audit_log, _ = start()  # reads the state back and replays Patient/2 from the log
    audit_log.record_sync(login("ann", "10.9.9.9"))
    audit_log.record_sync(read("ann", "Patient/3"))
    wait_for(
        lambda: {"alert-new-address", "alert-patient-spread"} <= set(_actions(path)),
        "both alerts after the restarts",
    )
    audit_log.close()


@contextmanager
def _webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on loopback that keeps the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


def test_an_alert_a_crash_kept_from_the_trail_is_recorded_at_the_next_start_once(
    tmp_path: Path,
) -> None:
    """The trigger was written, the hub died before the alert was: the next start records
    it, once; the webhook hears of it again after a later crash (same log_id and seq)."""
    path = tmp_path / "audit.jsonl"
    state = tmp_path / "audit.jsonl.alerts.json"
    rules = AlertRules(patient_limit=2, patient_window=3600)
    with _webhook_receiver() as (url, received):

        def start() -> AuditLog:
            sink = AlertSink(rules, Webhook(url, backoff=0.1))
            audit_log = AuditLog(path, sinks=[sink])
            sink.attach(audit_log)
            return audit_log

        audit_log = start()
        for event in (login("ann", "10.0.0.1"), read("ann", "Patient/1"), read("ann", "Patient/2")):
            audit_log.record_sync(event)
        audit_log.close()
        before_the_trigger = state.read_bytes()
        audit_log = AuditLog(path)  # no rules: a hub that died once the trigger was durable
        audit_log.record_sync(read("ann", "Patient/3"))
        audit_log.close()
        assert _actions(path) == []

        audit_log = start()  # replays Patient/3: the alert is missing, so it is recorded now
        wait_for(lambda: _actions(path) == ["alert-patient-spread"], "the missed alert")
        wait_for(lambda: len(received) == 1, "the webhook")
        audit_log.close()

        state.write_bytes(before_the_trigger)  # a crash again, before the state was saved
        audit_log = start()  # replays Patient/3 and its alert: nothing recorded twice
        audit_log.record_sync(read("ann", "Patient/1"))
        wait_for(lambda: len(received) == 2, "the webhook told again")
        audit_log.close()
    assert _actions(path) == ["alert-patient-spread"]
    assert received[0] == received[1] and received[0]["kind"] == "alert-patient-spread"


def _actions(path: Path) -> list[str]:
    return [
        c["code"]
        for r in records(path)
        for c in r.get("subtype") or ()
        if str(c.get("code", "")).startswith("alert")
    ]
