"""EHR launch and standalone launch through a real sandbox and a real JupyterHub."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from hub_process import Browser, ehr_launch, launch_until_callback, location, patient_ids, query

from .conftest import SmartEnv


def test_ehr_launch_public_client_logs_in_with_the_patient(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    patient = patient_ids(sandbox)[1]
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient)
        assert answer.status_code == 302, answer.text[:2000]
        assert location(answer) == f"{hub.url}/hub/home"
        # the authorize request carried everything SMART asks for
        authorize = next(u for u in browser.visited if "/auth/authorize" in u)
        params = query(authorize)
        assert params["aud"] == sandbox.iss
        assert params["code_challenge_method"] == "S256"
        assert params["launch"] and params["nonce"] and len(params["state"]) >= 22
        assert "launch" in params["scope"].split()
        home = browser.get(f"{hub.url}/hub/home")
        assert home.status_code == 200
    name = _user_of(hub, sandbox)
    state = hub.auth_state(name)
    assert state["patient"] == patient
    assert state["iss"] == sandbox.iss and state["fhir_base_url"] == sandbox.iss
    assert state["fhirUser"].startswith("Practitioner/")
    assert state["access_token"] and state["refresh_token"] and state["expires_at"]
    assert "patient/*.rs" in state["scope"] or any(s.startswith("patient/") for s in state["scope"])
    assert name.startswith("practitioner-")
    context_keys = {"encounter", "fhirContext", "need_patient_banner", "smart_style_url"}
    assert context_keys | {"intent", "tenant"} <= set(state)
    # Done when: the token API hands this user a token that reads the patient at the EHR
    token = hub.user_token(name)
    response = httpx.get(
        f"{hub.url}/hub/api/smart/token", headers={"Authorization": f"token {token}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == patient and body["fhir_base_url"] == sandbox.iss
    fhir = httpx.get(
        f"{sandbox.iss}/Patient/{patient}",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert fhir.status_code == 200 and fhir.json()["id"] == patient


def test_ehr_launch_private_key_jwt_and_token_api_reads_the_patient(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.jwt
    patient = patient_ids(sandbox)[2]
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient)
        assert answer.status_code == 302, answer.text[:2000]
    name = _user_of(hub, sandbox)
    assert hub.auth_state(name)["patient"] == patient
    token = hub.user_token(name)
    response = httpx.get(
        f"{hub.url}/hub/api/smart/token", headers={"Authorization": f"token {token}"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_at",
        "scope",
        "fhir_base_url",
        "patient",
        "encounter",
        "fhirUser",
        "need_patient_banner",
        "smart_style_url",
    }
    assert body["patient"] == patient and body["fhir_base_url"] == sandbox.iss
    assert "refresh_token" not in response.text
    fhir = httpx.get(
        f"{sandbox.iss}/Patient/{patient}",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert fhir.status_code == 200 and fhir.json()["id"] == patient
    # the sandbox fetched the hub's JWKS to check the client assertion
    assert "/hub/smart/jwks.json" in hub.log_text()


def test_same_practitioner_at_two_ehrs_is_two_users(smart_env: SmartEnv) -> None:
    hub = smart_env.hub
    for sandbox in (smart_env.public, smart_env.jwt):
        with Browser() as browser:
            assert ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0]).status_code == 302
    a, b = _user_of(hub, smart_env.public), _user_of(hub, smart_env.jwt)
    assert a != b and a.split("@")[0] == b.split("@")[0]


def test_a_later_launch_for_another_patient_replaces_the_context(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    first, second = patient_ids(sandbox)[3], patient_ids(sandbox)[4]
    with Browser() as browser:
        ehr_launch(browser, sandbox, hub, first)
        name = _user_of(hub, sandbox)
        token = hub.user_token(name)
        api = {"Authorization": f"token {token}"}
        assert httpx.get(f"{hub.url}/hub/api/smart/token", headers=api).json()["patient"] == first
        ehr_launch(browser, sandbox, hub, second)
        assert httpx.get(f"{hub.url}/hub/api/smart/token", headers=api).json()["patient"] == second


def test_two_launches_in_two_tabs_both_work(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    ids = patient_ids(sandbox)
    with Browser() as browser:
        tabs = [launch_until_callback(browser, sandbox, hub, patient) for patient in ids[:2]]
        # both callbacks arrive after both launches started
        for callback in reversed(tabs):
            answer = browser.get(callback)
            assert answer.status_code == 302, answer.text[:1000]


def test_standalone_launch_shows_the_issuer_picker_then_signs_in(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        page = browser.get(hub.login_url)
        assert page.status_code == 200
        assert sandbox.iss in page.text and smart_env.jwt.iss in page.text
        start = f"{hub.login_url}?iss={sandbox.iss}"
        hop = browser.follow(start, stop_at=hub.callback_url)
        authorize = next(u for u in browser.visited if "/auth/authorize" in u)
        assert "launch" not in query(authorize)
        assert "launch" not in query(authorize)["scope"].split()
        answer = browser.get(location(hop))
        assert answer.status_code == 302, answer.text[:1000]


def test_jwks_endpoint_serves_only_public_parts(smart_env: SmartEnv) -> None:
    response = httpx.get(f"{smart_env.hub.url}/hub/smart/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS384"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(keys[0])


def _user_of(hub, sandbox) -> str:  # type: ignore[no-untyped-def]
    users = httpx.get(
        f"{hub.url}/hub/api/users", headers={"Authorization": f"token {hub.admin_token}"}
    ).json()
    suffix = f"@127.0.0.1-{sandbox.port}-fhir"
    names = [u["name"] for u in users if u["name"].endswith(suffix)]
    assert names, [u["name"] for u in users]
    return str(names[0])


def test_login_is_on_the_audit_trail_and_the_chain_verifies(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    patient = patient_ids(sandbox)[1]
    with Browser() as browser:
        assert ehr_launch(browser, sandbox, hub, patient).status_code == 302
    name = _user_of(hub, sandbox)
    lines = [json.loads(line) for line in hub.audit_path.read_text().splitlines()]
    logins = [e for e in lines if e["subtype"][0]["code"] == "login-succeeded"]
    assert (
        logins and name in json.dumps(logins[-1]) and f"Patient/{patient}" in json.dumps(logins[-1])
    )
    verified = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "verify", str(hub.audit_path)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_hub_login_page_offers_the_ehr_sign_in(smart_env: SmartEnv) -> None:
    page = httpx.get(f"{smart_env.hub.url}/hub/login")
    assert page.status_code == 200
    assert "your EHR" in page.text and "/hub/oauth_login" in page.text


def test_notebook_audit_reports_land_in_the_hubs_audit_log(smart_env: SmartEnv) -> None:
    """The audit engineer's POST /hub/api/smart/audit is wired in, on the authenticator's log."""
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        assert ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0]).status_code == 302
    name = _user_of(hub, sandbox)
    token = hub.user_token(name)
    response = httpx.post(
        f"{hub.url}/hub/api/smart/audit",
        headers={"Authorization": f"token {token}"},
        json={"events": [{"interaction": "read", "resource_type": "Patient", "status": 200}]},
    )
    assert response.status_code == 201, response.text
    last = json.loads(hub.audit_path.read_text().splitlines()[-1])
    assert last["subtype"][0]["code"] == "data-access" and name in json.dumps(last)
