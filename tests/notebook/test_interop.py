"""httpx.Auth and requests auth, and the documented fhirpy and fhirclient examples, on the sandbox."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import requests
from fhirclient import server as fhir_server
from fhirclient.models.observation import Observation
from fhirpy import SyncFHIRClient
from sandbox_process import SandboxProcess

from jupyterhub_smart.notebook import CallableTokenProvider, DataAccessEvent, UnsafeURL, connect
from jupyterhub_smart.notebook.auth import SMARTAuth, SMARTRequestsAuth

from .sandbox_tokens import patient_login, system_token

PATIENT = "patient-00001"


class Minting:
    """Counts tokens minted; ``revoke_first`` makes the first token a dead one (a real 401)."""

    def __init__(self, sandbox: SandboxProcess, revoke_first: bool = False) -> None:
        self.sandbox = sandbox
        self.revoke_first = revoke_first
        self.minted: list[str] = []

    def __call__(self) -> dict[str, Any]:
        body = system_token(self.sandbox)
        self.minted.append(body["access_token"])
        if self.revoke_first and len(self.minted) == 1:
            response = httpx.post(
                f"{self.sandbox.origin}/auth/revoke",
                auth=("test-symmetric", "test-symmetric-secret-0123456789"),
                data={"token": body["access_token"]},
            )
            assert response.status_code == 200
        return body


def test_httpx_auth_sync_and_retry_after_a_real_401(sandbox: SandboxProcess) -> None:
    mint = Minting(sandbox, revoke_first=True)
    auth = SMARTAuth(CallableTokenProvider(mint, sandbox.iss))
    with httpx.Client(auth=auth) as http:
        response = http.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == 200 and response.json()["id"] == PATIENT
    assert len(mint.minted) == 2  # the revoked token got a real 401, then one new token


async def test_httpx_auth_async(sandbox: SandboxProcess) -> None:
    auth = SMARTAuth(CallableTokenProvider(Minting(sandbox), sandbox.iss))
    async with httpx.AsyncClient(auth=auth) as http:
        response = await http.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == 200


def test_auth_never_sends_the_token_elsewhere(sandbox: SandboxProcess) -> None:
    auth = SMARTAuth(CallableTokenProvider(Minting(sandbox), sandbox.iss))
    with httpx.Client(auth=auth) as http, pytest.raises(UnsafeURL):
        http.get(f"{sandbox.origin}/auth/introspect")
    session = requests.Session()
    session.auth = SMARTRequestsAuth(CallableTokenProvider(Minting(sandbox), sandbox.iss))
    with pytest.raises(UnsafeURL):
        session.get(f"{sandbox.origin}/ehr")


def test_requests_auth_and_retry_after_a_real_401(sandbox: SandboxProcess) -> None:
    mint = Minting(sandbox, revoke_first=True)
    session = requests.Session()
    session.auth = SMARTRequestsAuth(CallableTokenProvider(mint, sandbox.iss))
    response = session.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == 200 and response.json()["id"] == PATIENT
    assert len(mint.minted) == 2 and len(response.history) == 1


def test_fhirpy_example(sandbox: SandboxProcess) -> None:
    tokens = patient_login(sandbox)
    fhir = connect(sandbox.iss, token_provider=lambda: tokens)
    ehr = SyncFHIRClient(fhir.context.fhir_base_url, requests_config={"auth": fhir.requests_auth()})
    observations = ehr.resources("Observation").search(patient=fhir.context.patient).fetch()
    assert observations and all(
        o["subject"]["reference"] == f"Patient/{PATIENT}" for o in observations
    )


def test_fhirclient_example(sandbox: SandboxProcess) -> None:
    tokens = patient_login(sandbox)
    fhir = connect(sandbox.iss, token_provider=lambda: tokens)
    srv = fhir_server.FHIRServer(None, base_uri=fhir.context.fhir_base_url + "/")
    srv.session.auth = fhir.requests_auth()
    found = list(
        Observation.where(
            {"patient": fhir.context.patient, "code": "8867-4"}
        ).perform_resources_iter(srv)
    )
    assert found and all(o.code.coding[0].code == "8867-4" for o in found)


def test_client_httpx_auth_helper(sandbox: SandboxProcess) -> None:
    fhir = connect(sandbox.iss, token_provider=lambda: system_token(sandbox))
    with httpx.Client(auth=fhir.httpx_auth()) as http:
        assert http.get(f"{sandbox.iss}/Patient/{PATIENT}").status_code == 200


def test_requests_through_the_auth_objects_are_reported(sandbox: SandboxProcess) -> None:
    """fhirpy, fhirclient and httpx requests made with the session's auth reach its event sink."""
    events: list[DataAccessEvent] = []
    tokens = patient_login(sandbox)
    fhir = connect(sandbox.iss, token_provider=lambda: tokens, event_sink=events.append)

    ehr = SyncFHIRClient(fhir.context.fhir_base_url, requests_config={"auth": fhir.requests_auth()})
    observations = ehr.resources("Observation").search(patient=fhir.context.patient).fetch()
    [search] = events
    assert (search.action, search.resource_type, search.status) == ("search", "Observation", 200)
    assert search.count == len(observations) and search.patient == PATIENT
    assert "patient" in dict(search.params)

    events.clear()
    srv = fhir_server.FHIRServer(None, base_uri=fhir.context.fhir_base_url + "/")
    srv.session.auth = fhir.requests_auth()
    found = list(
        Observation.where({"patient": PATIENT, "code": "8867-4"}).perform_resources_iter(srv)
    )
    assert events and {e.action for e in events} == {"search"}
    assert sum(e.count for e in events) == len(found)  # every page, with its size

    events.clear()
    with httpx.Client(auth=fhir.httpx_auth()) as http:
        assert http.get(f"{sandbox.iss}/Patient/{PATIENT}").status_code == 200
        assert http.get(f"{sandbox.iss}/Patient/nobody").status_code == 404
        assert http.get(f"{sandbox.iss}/metadata").status_code == 200  # not a resource request
    assert [(e.action, e.resource_id, e.status, e.count) for e in events] == [
        ("read", PATIENT, 200, 1),
        ("read", "nobody", 404, 0),
    ]
    assert events[1].patient == "nobody"  # about whom the request was, even when refused


def test_a_retried_request_is_reported_once(sandbox: SandboxProcess) -> None:
    for make in (SMARTAuth, SMARTRequestsAuth):
        events: list[DataAccessEvent] = []
        mint = Minting(sandbox, revoke_first=True)
        auth = make(CallableTokenProvider(mint, sandbox.iss), event_sink=events.append)
        if make is SMARTAuth:
            with httpx.Client(auth=auth) as http:
                status = http.get(f"{sandbox.iss}/Patient/{PATIENT}").status_code
        else:
            session = requests.Session()
            session.auth = auth
            status = session.get(f"{sandbox.iss}/Patient/{PATIENT}").status_code
        assert status == 200 and len(mint.minted) == 2
        assert [(e.action, e.status) for e in events] == [("read", 200)], make


async def test_async_httpx_auth_reports_too(sandbox: SandboxProcess) -> None:
    events: list[DataAccessEvent] = []
    auth = SMARTAuth(CallableTokenProvider(Minting(sandbox), sandbox.iss), event_sink=events.append)
    async with httpx.AsyncClient(auth=auth) as http:
        response = await http.get(f"{sandbox.iss}/Observation", params={"patient": PATIENT})
    assert response.status_code == 200
    [event] = events
    assert event.action == "search" and event.count == len(response.json().get("entry", []))
