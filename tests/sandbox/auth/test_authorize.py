"""Authorize endpoint rules and refusals, against a real auto-approving sandbox."""

from __future__ import annotations

import httpx
from leak_scan import Ledger
from sandbox_process import SandboxProcess

from .flow import (
    OTHER_REDIRECT_URI,
    REDIRECT_URI,
    authorize,
    ehr_launch,
    exchange,
    patient_ids,
    query_of,
)

STANDALONE = "openid fhirUser launch/patient patient/*.rs offline_access"


def test_discovery_lists_what_smart_requires(http: httpx.Client, sbx: SandboxProcess) -> None:
    config = http.get("/fhir/.well-known/smart-configuration").json()
    origin = sbx.origin
    assert config["issuer"] == f"{origin}/auth"
    assert config["jwks_uri"] == f"{origin}/auth/jwks"
    assert config["authorization_endpoint"] == f"{origin}/auth/authorize"
    assert config["token_endpoint"] == f"{origin}/auth/token"
    assert config["introspection_endpoint"] == f"{origin}/auth/introspect"
    assert config["revocation_endpoint"] == f"{origin}/auth/revoke"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(
        config["grant_types_supported"]
    )
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert config["response_types_supported"] == ["code"]
    assert config["authorization_response_iss_parameter_supported"] is True
    for capability in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-ehr-encounter",
        "context-standalone-patient",
        "permission-offline",
        "permission-online",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
        "sso-openid-connect",
    ):
        assert capability in config["capabilities"]
    assert "scopes_supported" in config


def test_standalone_launch_gives_patient_and_fhir_access(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE)
    assert auth.response.status_code == 302
    assert auth.location.startswith(REDIRECT_URI + "?")
    assert auth.result["state"] == auth.state
    assert auth.result["iss"] == f"{sbx.origin}/auth"  # RFC 9207
    secret_scan.add(auth.code)
    token = exchange(http, auth, "app-public")
    assert token.status_code == 200, token.text
    body = token.json()
    secret_scan.add(body["access_token"], body["refresh_token"], body["id_token"])
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert set(body["scope"].split()) == set(STANDALONE.split())
    assert body["patient"] == patient_ids(http)[0]
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"] == f"{sbx.origin}/ehr/smart-style.json"
    assert token.headers["cache-control"] == "no-store"
    patient = http.get(
        f"/fhir/Patient/{body['patient']}",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert patient.status_code == 200
    assert patient.json()["id"] == body["patient"]
    anonymous = http.get(f"/fhir/Patient/{body['patient']}")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


def test_login_hint_names_the_standalone_patient(http: httpx.Client, sbx: SandboxProcess) -> None:
    second = patient_ids(http)[1]
    auth = authorize(
        http, sbx.iss, "app-public", STANDALONE, extra={"login_hint": f"Patient/{second}"}
    )
    assert exchange(http, auth, "app-public").json()["patient"] == second


def test_smart_style_is_served(http: httpx.Client) -> None:
    style = http.get("/ehr/smart-style.json")
    assert style.status_code == 200
    assert "color_highlight" in style.json()


def test_wrong_redirect_uri_is_an_error_page_never_a_redirect(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    auth = authorize(
        http, sbx.iss, "app-public", STANDALONE, redirect_uri="http://127.0.0.1:9/callback/evil"
    )
    assert auth.response.status_code == 400
    assert "location" not in auth.response.headers
    assert "text/html" in auth.response.headers["content-type"]
    assert "not supported by client" in auth.response.text


def test_missing_redirect_uri_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, drop=("redirect_uri",))
    assert auth.response.status_code == 400
    assert "location" not in auth.response.headers


def test_unknown_client_is_an_error_page(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "no-such-client", STANDALONE)
    assert auth.response.status_code == 400
    assert "location" not in auth.response.headers
    assert "invalid_client" in auth.response.text


def test_missing_pkce_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-symmetric", STANDALONE, pkce=False)
    assert auth.response.status_code == 302
    assert auth.result["error"] == "invalid_request"
    assert "PKCE" in auth.result["error_description"]
    assert auth.result["state"] == auth.state
    assert "code" not in auth.result


def test_plain_pkce_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, method="plain")
    assert auth.result["error"] == "invalid_request"
    assert "S256" in auth.result["error_description"]


def test_pkce_without_method_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, drop=("code_challenge_method",))
    assert auth.result["error"] == "invalid_request"


def test_wrong_aud_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, aud="http://evil.example/fhir")
    assert auth.result["error"] == "invalid_request"
    assert "aud" in auth.result["error_description"]
    assert auth.result["state"] == auth.state
    assert auth.result["iss"] == f"{sbx.origin}/auth"


def test_missing_aud_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, drop=("aud",))
    assert auth.result["error"] == "invalid_request"


def test_missing_scope_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, drop=("scope",))
    assert auth.result["error"] == "invalid_scope"


def test_malformed_scope_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", "openid patient/Observation.xyz")
    assert auth.result["error"] == "invalid_scope"


def test_unsupported_response_type_is_redirected(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, extra={"response_type": "token"})
    assert auth.result["error"] == "unsupported_response_type"


def test_duplicate_parameter_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    response = http.get(
        "/auth/authorize",
        params=[("response_type", "code"), ("client_id", "app-public"), ("client_id", "app-other")],
    )
    assert response.status_code == 400
    assert "location" not in response.headers


def test_scope_not_registered_is_not_granted(http: httpx.Client, sbx: SandboxProcess) -> None:
    requested = "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs user/*.rs"
    auth = authorize(http, sbx.iss, "app-limited", requested)
    body = exchange(http, auth, "app-limited").json()
    assert set(body["scope"].split()) == {
        "openid",
        "fhirUser",
        "launch/patient",
        "patient/Patient.rs",
    }
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert http.get(f"/fhir/Patient/{body['patient']}", headers=headers).status_code == 200


def test_v1_and_v2_scopes_with_query_are_granted(http: httpx.Client, sbx: SandboxProcess) -> None:
    requested = "launch/patient patient/Patient.read patient/Observation.rs?category=vital-signs"
    auth = authorize(http, sbx.iss, "app-public", requested)
    body = exchange(http, auth, "app-public").json()
    assert body["scope"].split() == requested.split()
    assert "refresh_token" not in body  # neither offline_access nor online_access
    assert "id_token" not in body  # no openid


def test_ehr_launch_keeps_its_patient_and_encounter(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    patient = patient_ids(http)[2]
    launched = ehr_launch(http, "http://127.0.0.1:9/launch", patient, client_id="app-public")
    assert launched.status_code == 302
    launch_params = query_of(launched.headers["location"])
    assert launch_params["iss"] == sbx.iss
    assert launched.headers["location"].startswith("http://127.0.0.1:9/launch?")
    secret_scan.add(launch_params["launch"])
    auth = authorize(
        http,
        sbx.iss,
        "app-public",
        "launch openid fhirUser patient/*.rs online_access",
        launch=launch_params["launch"],
    )
    body = exchange(http, auth, "app-public").json()
    assert body["patient"] == patient
    assert body["need_patient_banner"] is False
    assert "launch" in body["scope"].split()
    assert "refresh_token" in body  # online_access


def test_replayed_launch_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    patient = patient_ids(http)[0]
    launch = query_of(
        ehr_launch(http, REDIRECT_URI, patient, client_id="app-public").headers["location"]
    )["launch"]
    first = authorize(http, sbx.iss, "app-public", "launch patient/*.rs", launch=launch)
    assert "code" in first.result
    again = authorize(http, sbx.iss, "app-public", "launch patient/*.rs", launch=launch)
    assert again.result["error"] == "invalid_request"
    assert "already used" in again.result["error_description"]


def test_foreign_launch_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    patient = patient_ids(http)[0]
    launched = ehr_launch(
        http, "http://127.0.0.2:9/launch", patient
    )  # bound to app-other by origin
    launch = query_of(launched.headers["location"])["launch"]
    stolen = authorize(http, sbx.iss, "app-public", "launch patient/*.rs", launch=launch)
    assert stolen.result["error"] == "invalid_request"
    assert "another client" in stolen.result["error_description"]
    # the rightful client can still use it
    own = authorize(
        http,
        sbx.iss,
        "app-other",
        "launch patient/*.rs",
        launch=launch,
        redirect_uri=OTHER_REDIRECT_URI,
    )
    assert "code" in own.result


def test_unknown_launch_and_missing_launch_scope_are_refused(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    unknown = authorize(http, sbx.iss, "app-public", "launch patient/*.rs", launch="made-up")
    assert unknown.result["error"] == "invalid_request"
    patient = patient_ids(http)[0]
    launch = query_of(
        ehr_launch(http, REDIRECT_URI, patient, client_id="app-public").headers["location"]
    )["launch"]
    no_scope = authorize(http, sbx.iss, "app-public", "patient/*.rs", launch=launch)
    assert no_scope.result["error"] == "invalid_scope"


def test_ehr_launch_refuses_bad_requests(http: httpx.Client) -> None:
    patient = patient_ids(http)[0]
    # an origin no client is registered on: no open redirect
    assert ehr_launch(http, "http://evil.example/launch", patient).status_code == 400
    assert (
        ehr_launch(http, REDIRECT_URI, "no-such-patient", client_id="app-public").status_code == 400
    )
    assert (
        ehr_launch(http, "javascript:alert(1)", patient, client_id="app-public").status_code == 400
    )
    assert (
        ehr_launch(http, "http://evil.example/x", patient, client_id="app-public").status_code
        == 400
    )
    assert http.get("/ehr/launch", params={"app": REDIRECT_URI}).status_code == 400


def test_missing_state_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, drop=("state",))
    assert auth.response.status_code == 302
    assert auth.result["error"] == "invalid_request"
    assert "state" in auth.result["error_description"]
    assert "code" not in auth.result


def test_launch_by_origin_binds_every_client_of_that_origin(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    patient = patient_ids(http)[0]
    shared = query_of(ehr_launch(http, REDIRECT_URI, patient).headers["location"])["launch"]
    foreign = authorize(
        http,
        sbx.iss,
        "app-other",
        "launch patient/*.rs",
        launch=shared,
        redirect_uri=OTHER_REDIRECT_URI,
    )
    assert foreign.result["error"] == "invalid_request"
    symmetric = authorize(http, sbx.iss, "app-symmetric", "launch patient/*.rs", launch=shared)
    assert "code" in symmetric.result
    # explicit client_id binds to that client alone
    only_public = query_of(
        ehr_launch(http, REDIRECT_URI, patient, client_id="app-public").headers["location"]
    )["launch"]
    refused = authorize(http, sbx.iss, "app-symmetric", "launch patient/*.rs", launch=only_public)
    assert "another client" in refused.result["error_description"]


def test_encounter_launch_and_fhir_context(http: httpx.Client, sbx: SandboxProcess) -> None:
    patient = patient_ids(http)[1]
    user = authorize(http, sbx.iss, "app-public", "user/*.rs")
    token = exchange(http, user, "app-public").json()["access_token"]
    bundle = http.get(
        "/fhir/Encounter", params={"patient": patient}, headers={"Authorization": f"Bearer {token}"}
    ).json()
    encounter = bundle["entry"][0]["resource"]["id"]
    observations = http.get(
        "/fhir/Observation",
        params={"patient": patient, "_count": "1"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    observation = observations["entry"][0]["resource"]["id"]
    launched = ehr_launch(
        http,
        REDIRECT_URI,
        patient,
        client_id="app-public",
        encounter=encounter,
        context=f"Observation/{observation}",
    )
    assert launched.status_code == 302, launched.text
    launch = query_of(launched.headers["location"])["launch"]
    auth = authorize(http, sbx.iss, "app-public", "launch patient/*.rs", launch=launch)
    body = exchange(http, auth, "app-public").json()
    assert body["patient"] == patient
    assert body["encounter"] == encounter
    assert body["fhirContext"] == [{"reference": f"Observation/{observation}"}]
    info = http.post(
        "/auth/introspect", data={"token": body["access_token"], "client_id": "app-public"}
    )
    assert info.json()["encounter"] == encounter
    assert info.json()["fhirContext"] == [{"reference": f"Observation/{observation}"}]
    # an encounter of another patient is refused
    other = patient_ids(http)[0]
    mismatch = ehr_launch(http, REDIRECT_URI, other, client_id="app-public", encounter=encounter)
    assert mismatch.status_code == 400
    assert "not an encounter of patient" in mismatch.text


def test_nothing_grantable_is_invalid_scope(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-limited", "user/*.rs patient/Observation.rs")
    assert auth.result["error"] == "invalid_scope"
    assert "registered" in auth.result["error_description"]


def test_prompt_none_succeeds_when_auto_approving(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", STANDALONE, extra={"prompt": "none"})
    assert "code" in auth.result


def test_capability_statement_points_at_the_same_endpoints(http: httpx.Client) -> None:
    config = http.get("/fhir/.well-known/smart-configuration").json()
    metadata = http.get("/fhir/metadata").json()
    security = metadata["rest"][0]["security"]["extension"]
    uris = {
        item["url"]: item["valueUri"]
        for ext in security
        if ext["url"].endswith("/oauth-uris")
        for item in ext["extension"]
    }
    assert uris["authorize"] == config["authorization_endpoint"]
    assert uris["token"] == config["token_endpoint"]
    assert (
        uris.get("introspect", config["introspection_endpoint"]) == config["introspection_endpoint"]
    )
    assert uris.get("revoke", config["revocation_endpoint"]) == config["revocation_endpoint"]
