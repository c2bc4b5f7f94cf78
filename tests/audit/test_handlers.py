"""``POST /hub/api/smart/audit`` against a real JupyterHub process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_process import Hub, run_hub

from jupyterhub_smart.audit.verify import expand_paths, iter_verified

from .helpers import can_mount, fill, tmpfs, wait_for

pytestmark = pytest.mark.slow  # a real JupyterHub process per module

SEARCH = {
    "interaction": "search-type",
    "resource_type": "Observation",
    "search_params": ["code", "date"],
    "count": 12,
    "status": 200,
    "patient": "Patient/p1",
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with run_hub(tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture(scope="module")
def alice(hub: Hub) -> str:
    return hub.user_token("alice", create=True)


def audit_records_at(path: Path) -> list[dict]:
    """Every record of the log at ``path``; raises if the log does not verify."""
    return [e.record for e in iter_verified(expand_paths([path]))] if path.exists() else []


def audit_records(hub: Hub) -> list[dict]:
    return audit_records_at(hub.audit_path)


def post(hub: Hub, token: str | None, body: object = None, **kwargs: object):  # type: ignore[no-untyped-def]
    with hub.api(token) as client:
        if body is not None:
            kwargs["json"] = body
        return client.post("/smart/audit", **kwargs)  # type: ignore[arg-type]


def test_events_are_recorded_with_the_tokens_identity(hub: Hub, alice: str) -> None:
    before = len(audit_records(hub))
    read = {"interaction": "read", "resource_type": "Patient", "resource_id": "p1", "status": 200}
    response = post(hub, alice, {"events": [SEARCH, read]}, headers={"User-Agent": "nb-client/1"})
    assert response.status_code == 201, response.text
    assert response.json() == {"recorded": 2}
    records = audit_records(hub)  # the log verifies (raises otherwise)
    assert len(records) == before + 2
    search, got = records[-2], records[-1]
    assert search["agent"][0]["altId"] == "alice"
    assert search["agent"][0]["network"]["address"] == "127.0.0.1"
    assert search["agent"][1]["who"]["display"] == "nb-client/1"
    assert search["subtype"][1]["code"] == "search-type"
    detail = {d["type"]: d["valueString"] for d in search["entity"][-1]["detail"]}
    assert detail["search-parameter-names"] == "code,date" and detail["count"] == "12"
    assert search["entity"][0]["what"]["reference"] == "Patient/p1"
    assert got["entity"][-1]["what"]["reference"] == "Patient/p1" and got["action"] == "R"


def test_identity_in_the_body_is_refused(hub: Hub, alice: str) -> None:
    before = audit_records(hub)
    for field in ("username", "fhir_user", "server_name"):
        response = post(hub, alice, {"events": [{**SEARCH, field: "bob"}]})
        assert response.status_code == 400
        assert "identity from the API token" in response.json()["message"]
    assert audit_records(hub) == before


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"events": [{**SEARCH, "search_params": ["code=8480-6"]}]}, 400, "events[0]: search"),
        ({"events": [{**SEARCH, "query": "code=8480-6"}]}, 400, "unknown field(s) query"),
        ({"events": [{**SEARCH, "interaction": "expunge"}]}, 400, "interaction must be one of"),
        ({"events": [{**SEARCH, "count": "12"}]}, 400, "count must be"),
        ({"events": [{**SEARCH, "patient": "Patient/1 OR 1=1"}]}, 400, "Patient reference"),
        ({"events": [SEARCH, "x"]}, 400, "events[1] must be an object"),
        ({"events": []}, 400, "non-empty list"),
        ({"evts": [SEARCH]}, 400, "body must be"),
        ({"events": [SEARCH] * 201}, 413, "too many events"),
    ],
)
def test_bad_bodies_get_clear_errors(
    hub: Hub, alice: str, body: object, status: int, message: str
) -> None:
    response = post(hub, alice, body)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]


def test_not_json_and_too_large(hub: Hub, alice: str) -> None:
    response = post(hub, alice, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["message"]
    response = post(hub, alice, content=b"events", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    big = b'{"events": [' + b" " * (300 * 1024) + b"]}"
    response = post(hub, alice, content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["message"]


def test_only_a_users_token(hub: Hub) -> None:
    assert post(hub, None, {"events": [SEARCH]}).status_code == 403
    assert post(hub, "not-a-token", {"events": [SEARCH]}).status_code == 403
    service = post(hub, hub.admin_token, {"events": [SEARCH]})
    assert service.status_code == 403 and "user's own token" in service.json()["message"]


def test_a_flood_is_rate_limited_per_user(hub: Hub) -> None:
    flood = hub.user_token("flood", create=True)
    limited = None
    for _ in range(15):  # default burst is 2000 events: 200 per request
        response = post(hub, flood, {"events": [SEARCH] * 200})
        if response.status_code == 429:
            limited = response
            break
        assert response.status_code == 201, response.text
    assert limited is not None, "never rate-limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert "too many audit events" in limited.json()["message"]
    # Another user is not slowed down by the flood, and the hub still answers.
    other = hub.user_token("calm", create=True)
    assert post(hub, other, {"events": [SEARCH]}).status_code == 201
    assert "rate-limited" in hub.log_text()


def test_no_token_in_the_hub_log_or_the_trail(hub: Hub, alice: str) -> None:
    post(hub, alice, {"events": [SEARCH]})
    text = hub.log_text() + Path(hub.audit_path).read_text()
    assert alice not in text
    assert hub.admin_token not in text
    assert "8480-6" not in text  # the refused search value never got anywhere


def test_a_credential_in_a_reports_header_is_redacted_and_long_text_bounded(
    hub: Hub, alice: str
) -> None:
    """The report's User-Agent is the notebook's to choose: vetted like any untrusted text."""
    leaked = "mF_9.B5f-4.1JqMzz8MFzzzzzzzz"
    agent = f"nb/1 Authorization: Bearer {leaked} " + "z" * 3000
    response = post(hub, alice, {"events": [SEARCH]}, headers={"User-Agent": agent})
    assert response.status_code == 201, response.text
    record = audit_records(hub)[-1]  # the log verifies (raises otherwise)
    shown = record["agent"][1]["who"]["display"]
    assert shown.startswith("nb/1 Authorization: [redacted] zzz") and len(shown) <= 512
    assert leaked not in Path(hub.audit_path).read_text() + hub.log_text()


@pytest.mark.skipif(not can_mount(), reason="a tiny tmpfs that really fills up needs root")
def test_full_audit_disk_answers_503_and_the_hub_keeps_running(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", size="64k") as disk:
        path = disk / "audit.jsonl"
        with run_hub(tmp_path / "hub", audit_path=path) as hub:
            token = hub.user_token("dora", create=True)
            assert post(hub, token, {"events": [SEARCH]}).status_code == 201
            filler = fill(disk)
            accepted = 1
            for _ in range(100):  # the file's last page may take a few more lines
                response = post(hub, token, {"events": [SEARCH]})
                if response.status_code != 201:
                    break
                accepted += 1
            assert response.status_code == 503, response.text
            assert "cannot be written right now" in response.json()["message"]
            with hub.api(hub.admin_token) as client:  # the hub itself is fine
                assert client.get("/users/dora").status_code == 200
            assert "is not writable (ENOSPC" in hub.log_text()
            filler.unlink()
            wait_for(
                lambda: len(audit_records_at(path)) == accepted + 1,
                "the held event to reach the disk",
            )
            assert post(hub, token, {"events": [SEARCH]}).status_code == 201
        records = audit_records_at(path)
        assert ["deferred" in r for r in records] == [False] * accepted + [True, False]


def test_notebook_reporter_batches_to_the_hub(hub: Hub) -> None:
    """The kernel-side reporter, fed the notebook client's own events, against the real hub."""
    from jupyterhub_smart.notebook.events import DataAccessEvent
    from jupyterhub_smart.notebook.reporting import HubAuditReporter

    token = hub.user_token("erin", create=True)
    reporter = HubAuditReporter(f"{hub.url}/hub/api/smart/audit", token, flush_interval=0.05)
    search = DataAccessEvent(
        action="search",
        resource_type="Observation",
        fhir_base_url="http://ehr/fhir",
        url="http://ehr/fhir/Observation?code=8480-6&patient=p1",
        status=200,
        count=3,
        patient="p1",
        params=(("code", "8480-6"), ("patient", "p1")),
    )
    read = DataAccessEvent(
        action="read",
        resource_type="Patient",
        fhir_base_url="http://ehr/fhir",
        url="http://ehr/fhir/Patient/p1",
        status=200,
        count=1,
        patient="p1",
        resource_id="p1",
    )
    try:
        for _ in range(120):  # more than one batch
            reporter(search)
        reporter(read)
        assert reporter.flush(30)
    finally:
        reporter.close()
    mine = [r for r in audit_records(hub) if r["agent"][0]["altId"] == "erin"]
    assert len(mine) == 121
    detail = {d["type"]: d["valueString"] for d in mine[0]["entity"][-1]["detail"]}
    assert detail["search-parameter-names"] == "code,patient"
    assert mine[-1]["entity"][-1]["what"]["reference"] == "Patient/p1"
    text = hub.audit_path.read_text()
    assert "8480-6" not in text and token not in text and token not in hub.log_text()


def test_a_token_note_cannot_invent_a_server(hub: Hub) -> None:
    """Users can write their own token notes: a claimed server must really be theirs."""
    user = hub.user_token("frank", create=True)
    with hub.api(user) as client:
        response = client.post("/users/frank/tokens", json={"note": "Server at /user/frank/fake/"})
        assert response.status_code == 201, response.text
        forged = response.json()["token"]
    assert post(hub, forged, {"events": [SEARCH]}).status_code == 201
    record = [r for r in audit_records(hub) if r["agent"][0]["altId"] == "frank"][-1]
    assert all(agent.get("type", {}).get("text") != "jupyter-server" for agent in record["agent"])
