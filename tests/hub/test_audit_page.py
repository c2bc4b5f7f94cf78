"""``/hub/smart/audit`` and the alert rules in a real JupyterHub process.

The hub (``hub_process.AUDIT_REVIEW_CONFIG``) runs the audit endpoint (notebook
reports, ``POST /hub/api/smart/audit``) with the audit page and the alert sink
wired in as SMARTAuthenticator wires them (:class:`AuditReviewSettings`), so
events reach the log the way a notebook's do. A privacy officer holds ``custom:smart:audit-read`` through
``load_roles``; a webhook receiver on loopback answers 500 once, then 200.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from hub_process import AUDIT_REVIEW_CONFIG, Hub, run_hub

from jupyterhub_smart.audit.verify import expand_paths, iter_verified

pytestmark = pytest.mark.slow  # a real JupyterHub process per module


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: the first POST fails (500), the next ones are kept."""

    bodies: list[dict] = []
    calls = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Receiver.calls += 1
        if Receiver.calls == 1:
            self.send_response(500)
        else:
            Receiver.bodies.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, webhook: str) -> Iterator[Hub]:
    with run_hub(
        tmp_path_factory.mktemp("audit-page"),
        authenticator={"webhook": webhook},
        extra=AUDIT_REVIEW_CONFIG,
    ) as running:
        yield running


def report(hub: Hub, token: str, events: list[dict]) -> None:
    with hub.api(token) as client:
        response = client.post("/smart/audit", json={"events": events})
    assert response.status_code == 201, response.text


def page(hub: Hub, token: str | None, query: str = "", **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.get(
        f"{hub.url}/hub/smart/audit{query}",
        headers=headers,
        timeout=60,
        follow_redirects=False,
        **kwargs,  # type: ignore[arg-type]
    )


def records(hub: Hub) -> list[dict]:
    return [e.record for e in iter_verified(expand_paths([hub.audit_path]))]


def search(patient: str, status: int = 200, count: int = 3) -> dict:
    return {
        "interaction": "search-type",
        "resource_type": "Observation",
        "count": count,
        "status": status,
        "patient": patient,
    }


def test_only_admins_and_audit_readers_see_the_page(hub: Hub) -> None:
    bob = hub.user_token("bob", create=True)
    report(hub, bob, [search("Patient/a1")])
    refused = page(hub, bob)
    assert refused.status_code == 403
    assert "custom:smart:audit-read" in refused.text
    assert "Patient/a1" not in refused.text
    assert page(hub, None).status_code in (302, 403)  # to the login page, never the trail
    for name in ("officer", "chief"):  # the scope's holder; an admin
        answer = page(hub, hub.user_token(name, create=True))
        assert answer.status_code == 200, (name, answer.text[:500])
        assert "Patient/a1" in answer.text
        assert answer.headers["Cache-Control"] == "no-store"
    assert page(hub, hub.admin_token).status_code == 200  # an admin service
    # Reads only: a POST is not a way in, with or without a token.
    posted = httpx.post(
        f"{hub.url}/hub/smart/audit",
        headers={"Authorization": f"token {hub.user_token('officer')}"},
        timeout=30,
    )
    assert posted.status_code in (403, 405)


def test_filters_pages_views_and_csv(hub: Hub) -> None:
    pager = hub.user_token("pager", create=True)
    for start in range(0, 60, 20):
        report(hub, pager, [search("Patient/pg", count=i) for i in range(start, start + 20)])
    officer = hub.user_token("officer", create=True)
    first = page(hub, officer, "?user=pager")
    assert first.status_code == 200
    assert '<small class="text-muted" id="audit-total">60 matching' in first.text
    assert first.text.count("search-type Observation") == 50
    assert "Page 1 of 2" in first.text and "(59)" in first.text  # newest first
    assert 'id="by-patient"' in first.text and ">Patient/pg</a>" in first.text
    second = page(hub, officer, "?user=pager&page=2")
    assert second.text.count("search-type Observation") == 10 and "(0)" in second.text

    by_patient = page(hub, officer, "?patient=pg")
    assert 'id="by-user"' in by_patient.text and ">pager</a>" in by_patient.text

    exported = page(hub, officer, "?user=pager&format=csv")
    assert exported.status_code == 200
    assert exported.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["count"]) for r in rows] == list(range(60))
    assert {r["patient"] for r in rows} == {"Patient/pg"}

    hostile = page(hub, officer, "?patient=%3Cscript%3Ealert(1)%3C/script%3E")
    assert hostile.status_code == 200
    assert "<script>alert(1)" not in hostile.text and "&lt;script&gt;alert(1)" in hostile.text
    for bad in ("?since=yesterday", "?page=two", "?page=0", "?format=xml"):
        answer = page(hub, officer, bad)
        assert answer.status_code == 400, bad
        assert 'id="audit-error"' in answer.text
    status = page(hub, officer)
    assert "Verified head: <strong>seq" in status.text
    assert 'id="checkpoint">Last signed checkpoint:' in status.text and "none" in status.text


def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def alerts(hub: Hub, kind: str, user: str) -> list[dict]:
    return [
        r
        for r in records(hub)
        if r["subtype"][0]["code"] == kind and r["agent"][0].get("altId") == user
    ]


def test_patient_spread_and_refused_tokens_raise_alerts(hub: Hub) -> None:
    roamer = hub.user_token("roamer", create=True)
    report(hub, roamer, [search(f"Patient/r{i}") for i in range(3)])
    assert alerts(hub, "alert-patient-spread", "roamer") == []  # 3 patients: at the limit
    report(hub, roamer, [search("Patient/r3")])
    _wait_for(lambda: alerts(hub, "alert-patient-spread", "roamer"), "the spread alert")
    [spread] = alerts(hub, "alert-patient-spread", "roamer")
    assert "4 distinct patients" in spread["outcomeDesc"]
    assert spread["type"]["code"] == "110113"  # DICOM Security Alert
    report(hub, roamer, [search("Patient/r4")])  # once per window, not once per record
    assert len(alerts(hub, "alert-patient-spread", "roamer")) == 1

    refused = hub.user_token("refused", create=True)
    report(hub, refused, [search("Patient/x1", status=401)])
    report(hub, refused, [search("Patient/x1", status=401)])
    _wait_for(lambda: alerts(hub, "alert-refused-tokens", "refused"), "the refused-token alert")

    # The webhook got both, after its first answer (500) was retried; no token in them.
    _wait_for(lambda: len(Receiver.bodies) >= 2, "the webhook posts")
    kinds = {(b["kind"], b["user"]) for b in Receiver.bodies}
    assert {("alert-patient-spread", "roamer"), ("alert-refused-tokens", "refused")} <= kinds
    assert Receiver.calls >= 3
    assert roamer not in json.dumps(Receiver.bodies) and refused not in json.dumps(Receiver.bodies)

    officer = hub.user_token("officer", create=True)
    listed = page(hub, officer, "?type=alert-*")
    assert "alert-patient-spread" in listed.text and "alert-refused-tokens" in listed.text
    assert "table-danger" in listed.text
