"""A notebook in proxy mode: connect() unchanged, and the documented fhirpy, fhirclient and requests examples.

The environment is what the hub gives a single-user server in proxy mode:
``SMART_FHIR_PROXY_URL`` and the server's ``JUPYTERHUB_API_TOKEN``, and no
``SMART_TOKEN_API_URL``. Every request below goes through the proxy, which
records it; the kernel never sees an EHR token.
"""

from __future__ import annotations

import os

import httpx
import pytest
import requests
from fhirclient import server as fhir_server
from fhirclient.models.observation import Observation
from fhirpy import SyncFHIRClient

from jupyterhub_smart.notebook import ReauthenticationRequired, connect

from .world import ProxyWorld, proxy_records, wait_records


@pytest.fixture
def kernel_env(proxy_world: ProxyWorld, monkeypatch: pytest.MonkeyPatch) -> ProxyWorld:
    monkeypatch.delenv("SMART_TOKEN_API_URL", raising=False)
    monkeypatch.setenv("SMART_FHIR_PROXY_URL", proxy_world.proxy_root)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", proxy_world.token)
    return proxy_world


def test_connect_works_unchanged_and_each_request_is_recorded(kernel_env: ProxyWorld) -> None:
    before = len(proxy_records(kernel_env))
    fhir = connect()
    assert fhir.context.fhir_base_url == kernel_env.base
    assert fhir.context.patient == kernel_env.patient
    assert fhir.read("Patient", kernel_env.patient)["id"] == kernel_env.patient
    rows = list(fhir.search("Observation", patient=kernel_env.patient, _count=3))
    assert rows
    fhir.close()
    records = proxy_records(kernel_env)[before:]
    assert len(records) >= 2  # the read, and one record per page of the search


def test_the_fhirpy_example(kernel_env: ProxyWorld) -> None:
    """fhirpy follows the rewritten next links through the proxy."""
    fhir = connect()
    ehr = SyncFHIRClient(fhir.context.fhir_base_url, requests_config={"auth": fhir.requests_auth()})
    found = ehr.resources("Observation").search(patient=fhir.context.patient).limit(3).fetch_all()
    assert found
    assert all(o["subject"]["reference"] == f"Patient/{kernel_env.patient}" for o in found)


def test_the_fhirclient_example(kernel_env: ProxyWorld) -> None:
    fhir = connect()
    srv = fhir_server.FHIRServer(None, base_uri=fhir.context.fhir_base_url + "/")
    srv.session.auth = fhir.requests_auth()
    found = list(Observation.where({"patient": fhir.context.patient}).perform_resources_iter(srv))
    assert found
    assert all(o.subject.reference == f"Patient/{kernel_env.patient}" for o in found)


def test_the_plain_requests_example(kernel_env: ProxyWorld) -> None:
    """No library of ours: the proxy URL and the server's JupyterHub token."""
    before = len(proxy_records(kernel_env))
    base = os.environ["SMART_FHIR_PROXY_URL"]
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    context = requests.get(
        f"{base}_context", headers={"Authorization": f"token {token}"}, timeout=60
    )
    fhir_base = context.json()["fhir_base_url"]
    patient = requests.get(
        f"{fhir_base}/Patient/{kernel_env.patient}",
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    assert patient.status_code == 200 and patient.json()["id"] == kernel_env.patient
    assert "access_token" not in context.text
    wait_records(kernel_env, before + 1)


def test_a_user_without_an_ehr_session_gets_a_working_sign_in_link(
    proxy_world: ProxyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMART_TOKEN_API_URL", raising=False)
    monkeypatch.setenv("SMART_FHIR_PROXY_URL", proxy_world.proxy_root)
    monkeypatch.setenv(
        "JUPYTERHUB_API_TOKEN", proxy_world.hub.user_token("carol-no-ehr", create=True)
    )
    with pytest.raises(ReauthenticationRequired) as caught:
        connect()
    link = caught.value.login_url
    assert link and link.endswith("/hub/oauth_login")
    target = link if link.startswith("http") else proxy_world.hub.url + link
    assert httpx.get(target, timeout=30).status_code in (200, 302)
