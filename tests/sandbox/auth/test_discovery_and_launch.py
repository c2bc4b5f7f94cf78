"""Discovery fields, POST authorize, exact redirect URIs, id_token nonce, EHR Launch buttons.

Each test pins one line of the sandbox's SMART App Launch 2.x contract that the
other modules do not reach, against the real auto-approving sandbox.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from leak_scan import Ledger
from sandbox_process import SandboxProcess

from .conftest import HUB_REDIRECT_URI
from .flow import REDIRECT_URI, authorize, exchange, pkce_pair, query_of

#: Every capability the sandbox claims, each exercised by a test of this package.
CAPABILITIES = {
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-banner",
    "context-style",
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
}


def test_discovery_claims_exactly_what_is_implemented(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    config = http.get("/fhir/.well-known/smart-configuration").json()
    # A claimed capability without an implementation would mislead clients that gate on it.
    assert set(config["capabilities"]) == CAPABILITIES
    assert "plain" not in config["code_challenge_methods_supported"]
    assert set(config["token_endpoint_auth_methods_supported"]) == {
        "none",
        "client_secret_basic",
        "private_key_jwt",
    }
    # RECOMMENDED: where the user sees and revokes what apps hold; it is the sessions page.
    assert config["management_endpoint"] == f"{sbx.origin}/ehr/sessions"
    page = http.get(urlsplit(config["management_endpoint"]).path)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]


def test_authorize_by_post(http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger) -> None:
    """``authorize-post``: the same request as a form POST gets a code too."""
    verifier, challenge = pkce_pair()
    response = http.post(
        "/auth/authorize",
        data={
            "response_type": "code",
            "client_id": "app-public",
            "redirect_uri": REDIRECT_URI,
            "scope": "launch/patient patient/*.rs",
            "state": "post-state-1234",
            "aud": sbx.iss,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert response.status_code == 302, response.text
    result = query_of(response.headers["location"])
    assert result["state"] == "post-state-1234"
    secret_scan.add(result["code"])
    token = http.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": result["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": "app-public",
        },
    )
    assert token.status_code == 200, token.text
    secret_scan.add(token.json()["access_token"])
    assert token.json()["patient"]


@pytest.mark.parametrize(
    "near_miss",
    [
        REDIRECT_URI + "/",
        REDIRECT_URI + "?next=/x",
        REDIRECT_URI.replace("/callback", "/Callback"),
        REDIRECT_URI.replace("http://", "https://"),
        REDIRECT_URI.replace("127.0.0.1:9", "127.0.0.1:90"),
        REDIRECT_URI.replace("127.0.0.1", "localhost"),
    ],
)
def test_redirect_uri_must_match_exactly(
    http: httpx.Client, sbx: SandboxProcess, near_miss: str
) -> None:
    auth = authorize(
        http, sbx.iss, "app-public", "launch/patient patient/*.rs", redirect_uri=near_miss
    )
    assert auth.response.status_code == 400
    assert "location" not in auth.response.headers  # never redirected to an unregistered URI


def test_id_token_without_nonce_has_no_nonce_claim(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", "openid fhirUser", drop=("nonce",))
    secret_scan.add(auth.code)
    body = exchange(http, auth, "app-public").json()
    secret_scan.add(body["access_token"], body["id_token"])
    keys = KeySet.import_key_set(http.get("/auth/jwks").json())
    token = jwt.decode(body["id_token"], keys, algorithms=["RS256"])
    assert "nonce" not in token.claims
    assert token.claims["aud"] == "app-public"
    assert token.claims["fhirUser"].startswith(f"{sbx.iss}/Practitioner/")


def test_ehr_launch_button_with_its_defaults(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    """Submit the first Launch form of ``/ehr`` as a browser would, options untouched."""
    page = http.get("/ehr")
    assert page.status_code == 200
    form = re.search(r'<form method="get" action="([^"]+)">(.*?)</form>', page.text, re.S)
    assert form, "the EHR page has no Launch form"
    fields: dict[str, str] = {}
    for name, value in re.findall(r'<input [^>]*name="([^"]+)" value="([^"]*)"', form.group(2)):
        fields[name] = unescape(value)
    for name in re.findall(r'<input type="text" name="([^"]+)">', form.group(2)):
        fields[name] = ""
    for name in re.findall(r'<select name="([^"]+)">', form.group(2)):
        fields[name] = ""  # the first option of each select is the empty default
    assert fields["app"] == "http://127.0.0.1:8000/hub/oauth_login"  # the demo hub
    launched = http.get(form.group(1), params=fields)
    assert launched.status_code == 302, launched.text
    target = launched.headers["location"]
    assert target.startswith("http://127.0.0.1:8000/hub/oauth_login?")
    params = query_of(target)
    assert params["iss"] == sbx.iss
    secret_scan.add(params["launch"])
    auth = authorize(
        http,
        sbx.iss,
        "hub",
        "launch openid fhirUser patient/*.rs",
        redirect_uri=HUB_REDIRECT_URI,
        launch=params["launch"],
    )
    secret_scan.add(auth.code)
    body = exchange(http, auth, "hub", redirect_uri=HUB_REDIRECT_URI).json()
    secret_scan.add(body["access_token"], body["id_token"])
    assert body["patient"] == fields["patient"]
    assert body["need_patient_banner"] is False  # the EHR shows its own banner


def test_openid_without_fhir_user_has_no_fhir_user_claim(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", "openid launch/patient patient/Patient.rs")
    secret_scan.add(auth.code)
    body = exchange(http, auth, "app-public").json()
    secret_scan.add(body["access_token"], body["id_token"])
    keys = KeySet.import_key_set(http.get("/auth/jwks").json())
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert "fhirUser" not in claims
    assert claims["sub"].startswith("Practitioner/")
    assert claims["nonce"] == auth.nonce
    info = http.post(
        "/auth/introspect", data={"token": body["access_token"], "client_id": "app-public"}
    ).json()
    assert "fhirUser" not in info and info["sub"] == claims["sub"]
