"""The proxy's records are the hub's: one accounting of disclosures, and revoked tokens stop.

The proxy sends each request's record to the hub, which appends it to its own
chain; so the hub's audit tools (``audit query``, ``audit report``, ``audit
verify``) see proxy accesses with nothing to merge. Only the proxy service may
post such records. A JupyterHub token revoked at the hub stops working at the
proxy within its token check interval (2 s), not after the session cache's 60 s.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jupyterhub_smart.audit import AuditLog, hub_event
from jupyterhub_smart.proxy.access import FHIRRequest
from jupyterhub_smart.proxy.records import Outcome, proxy_event

from .world import ProxyWorld, details, proxy_records, wait_records


def _audit(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_proxied_read_is_in_audit_query_report_and_verify(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    with proxy_world.client() as client:
        assert client.get(f"Patient/{proxy_world.patient}").status_code == 200
    record = wait_records(proxy_world, before + 1)[before]
    seq = record["seq"]
    path = str(proxy_world.audit_path)
    patient = f"Patient/{proxy_world.patient}"

    found = json.loads(_audit("query", path, "--patient", patient, "--format", "json"))
    mine = [r for r in found if r["seq"] == seq]
    assert len(mine) == 1 and details(mine[0])["recorded-by"] == "fhir-proxy"
    assert mine[0]["agent"][0]["altId"] == proxy_world.user

    rows = list(
        csv.DictReader(io.StringIO(_audit("report", path, "--patient", patient, "--format", "csv")))
    )
    row = next(r for r in rows if r["seq"] == str(seq))
    assert (row["user"], row["interaction"], row["resource_type"], row["outcome"]) == (
        proxy_world.user,
        "read",
        "Patient",
        "success",
    )
    _audit("verify", path)


def test_only_the_proxy_service_posts_proxy_records(proxy_world: ProxyWorld) -> None:
    record = proxy_records(proxy_world)[-1] if proxy_records(proxy_world) else None
    event = {k: v for k, v in (record or {}).items() if k not in ("seq", "prev", "hash")}
    url = f"{proxy_world.hub.url}/hub/api/smart/proxy-records"
    for token in (proxy_world.token, proxy_world.hub.admin_token):
        answer = httpx.post(
            url, json={"events": [event]}, headers={"Authorization": f"token {token}"}
        )
        assert answer.status_code == 403, answer.text
    assert httpx.post(url, json={"events": []}).status_code == 403
    # The keyed path (the record key the proxy got with its service token) takes no guess.
    for key in ("", "guess", proxy_world.token):
        answer = httpx.post(
            f"{url}/keyed", json={"events": []}, headers={"X-SMART-Proxy-Record-Key": key}
        )
        assert (answer.status_code, answer.json()["error"]) == (403, "record_key_unknown")


def test_a_revoked_jupyterhub_token_stops_at_the_proxy_within_seconds(
    proxy_world: ProxyWorld,
) -> None:
    token = proxy_world.hub.user_token(proxy_world.user)
    with proxy_world.client(token) as client:
        assert client.get(f"Patient/{proxy_world.patient}").status_code == 200
        with proxy_world.hub.api(token) as api:
            token_id = api.get("/user").json()["token_id"]
        with proxy_world.hub.api(proxy_world.hub.admin_token) as api:
            api.delete(f"/users/{proxy_world.user}/tokens/{token_id}").raise_for_status()
        # The session cache holds the EHR token for a minute; the JupyterHub token
        # check (every 2 s) ends it well before that.
        deadline = time.monotonic() + 30
        while (answer := client.get(f"Patient/{proxy_world.patient}")).status_code == 200:
            assert time.monotonic() < deadline, "a revoked token still works at the proxy"
            time.sleep(0.2)
    assert answer.status_code == 401, answer.text
    assert token not in answer.text


def test_a_search_across_patients_is_in_each_patients_accounting(tmp_path: Path) -> None:
    """A proxy record naming three patients is found by ``--patient`` for each of them."""
    path = tmp_path / "audit.jsonl"
    request = FHIRRequest("GET", "search-type", "Observation", params=(("code", "8867-4"),))
    outcome = Outcome(status=200, count=3, patients=("a", "b", "c"))
    event = proxy_event(
        request,
        outcome,
        username="dr-who",
        fhir_user="Practitioner/1",
        issuer="https://ehr.example/fhir",
        client_address="127.0.0.1",
        user_agent=None,
        scope="user/Observation.rs",
    )
    with AuditLog(str(path)) as audit_log:
        audit_log.record_sync(hub_event("login-succeeded", username="dr-who"))
        seq = audit_log.record_sync(event)
    for patient in ("a", "Patient/b", "c"):
        found = json.loads(_audit("query", str(path), "--patient", patient, "--format", "json"))
        assert [r["seq"] for r in found] == [seq], patient
        report = _audit("report", str(path), "--patient", patient, "--format", "csv")
        assert [r["seq"] for r in csv.DictReader(io.StringIO(report))] == [str(seq)]
    assert json.loads(_audit("query", str(path), "--patient", "d", "--format", "json")) == []
