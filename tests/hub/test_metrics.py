"""Prometheus metrics on JupyterHub's /hub/metrics, scraped from the package's real hubs.

After a real EHR launch, token API calls, a forced refresh and a failed discovery,
the SMART metrics move, parse with prometheus_client's own parser, and nothing in
the whole metrics text names a user or a patient.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import httpx
from hub_process import Browser, Hub, ehr_launch, patient_ids
from prometheus_client.parser import text_string_to_metric_families

from jupyterhub_smart.audit import AuditLog, SyslogSink, hub_event
from jupyterhub_smart.hub.metrics import AuditCollector

from .conftest import EvilEnv, SmartEnv

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(hub: Hub) -> tuple[str, Samples]:
    with hub.api(hub.admin_token) as api:
        response = httpx.get(
            f"{hub.url}/hub/metrics", headers=api.headers, timeout=30, follow_redirects=False
        )
    assert response.status_code == 200, response.text[:500]
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return response.text, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _sum(samples: Samples, name: str) -> float:
    return sum(value for (metric, _), value in samples.items() if metric == name)


def test_metrics_count_logins_tokens_refreshes_and_audit_writes(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    _, before = _scrape(hub)
    patients = patient_ids(sandbox)
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patients[-1])
        assert answer.status_code == 302, answer.text[:1000]
    with hub.api(hub.admin_token) as api:
        names = [u["name"] for u in api.get("/users").json() if "@" in u["name"]]
    token = hub.user_token(names[0])
    url = f"{hub.url}/hub/api/smart/token"
    headers = {"Authorization": f"token {token}"}
    first = httpx.get(url, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    refused = hashlib.sha256(first.json()["access_token"].encode()).hexdigest()
    forced = httpx.get(url, headers=headers, params={"rejected": refused}, timeout=30)
    assert forced.status_code == 200, forced.text
    assert httpx.get(url, timeout=30).status_code == 401

    text, after = _scrape(hub)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return _value(after, name, **labels) - _value(before, name, **labels) >= by

    assert grew("jupyterhub_smart_logins_total", outcome="success")
    assert grew("jupyterhub_smart_refreshes_total", outcome="success")
    token_api = "jupyterhub_smart_token_api_request_duration_seconds_count"
    assert grew(token_api, 2, code="200")
    assert grew(token_api, 1, code="401")
    assert _value(after, "jupyterhub_smart_audit_write_duration_seconds_count") > _value(
        before, "jupyterhub_smart_audit_write_duration_seconds_count"
    )
    assert _value(after, "jupyterhub_smart_audit_log_writable") == 1
    assert ("jupyterhub_smart_audit_backlog_events", ()) in after
    assert _value(after, "jupyterhub_smart_audit_sink_spool_bytes") == 0  # no sink configured
    assert _value(after, "jupyterhub_smart_audit_sink_pending_events") == 0
    # every outcome is there from the start, so a rate() has a series to work on
    for outcome in ("refused", "failed", "unavailable", "error"):
        assert ("jupyterhub_smart_logins_total", (("outcome", outcome),)) in after

    # no user, patient or practitioner in any name, label or help text
    state = hub.rest_auth_state(names[0])
    for name in names:
        assert name not in text
        assert name.split("@")[0] not in text
    for patient in patients:
        assert patient not in text
    assert state["fhirUser"].split("/")[-1] not in text
    labels = {
        key
        for (metric, pairs) in after
        if metric.startswith("jupyterhub_smart")
        for key, _ in pairs
    }
    assert labels <= {"outcome", "code", "issuer", "le"}


def test_metrics_count_discovery_failures_per_configured_issuer(evil_env: EvilEnv) -> None:
    hub, evil = evil_env.hub, evil_env.evil
    _, before = _scrape(hub)
    response = httpx.get(hub.login_url, params={"iss": evil.broken_iss}, timeout=30)
    assert response.status_code == 502, response.text[:500]
    refused = httpx.get(hub.login_url, params={"iss": "https://not-configured.example/fhir"})
    assert refused.status_code in (400, 403)
    text, after = _scrape(hub)
    name = "jupyterhub_smart_discovery_failures_total"
    assert _value(after, name, issuer=evil.broken_iss) > _value(
        before, name, issuer=evil.broken_iss
    )
    # only configured issuers become label values: an iss off the allow-list is never one
    assert "not-configured.example" not in text
    issuers = {dict(labels)["issuer"] for (metric, labels) in after if metric == name}
    assert issuers <= {evil.iss, evil.broken_iss, evil.basic_iss}


class _Trail:
    """What the collector reads from the hub's trail: its opened log."""

    def __init__(self, opened_log: object) -> None:
        self.opened_log = opened_log


def test_what_a_sink_has_not_delivered_is_reported(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: the receiver is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SyslogSink(f"tcp://127.0.0.1:{port}", tmp_path / "spool")
    with AuditLog(tmp_path / "audit.jsonl", sinks=[sink]) as log:
        for i in range(3):
            log.record_sync(hub_event("logout", username=f"user{i}"))
        collector = AuditCollector()
        trail = _Trail(log)
        collector.watch(trail)
        values = {family.name: family.samples[0].value for family in collector.collect()}
    assert values["jupyterhub_smart_audit_sink_pending_events"] == 3
