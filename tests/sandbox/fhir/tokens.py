"""Getting real access tokens from the sandbox's authorization server, with plain httpx.

Written from the SMART specs for these tests alone: the FHIR server's tests
must not share protocol code with either the client side or the sandbox.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

REDIRECT_URI = "http://127.0.0.1:9/fhir-tests/callback"
BACKEND_SECRET = "fhir-tests-backend-secret-5c1e0b7a9d"

PUBLIC = {"client_id": "fhir-public", "type": "public", "redirect_uris": [REDIRECT_URI]}
BACKEND = {
    "client_id": "fhir-backend",
    "type": "confidential-symmetric",
    "client_secret": BACKEND_SECRET,
    "redirect_uris": [REDIRECT_URI],
    "scope": "system/*.rs system/AuditEvent.c",
}
CLIENTS = [PUBLIC, BACKEND]


def backend_token(http: httpx.Client, scope: str = "system/*.rs") -> dict[str, Any]:
    """``client_credentials`` with ``client_secret_basic``."""
    response = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(BACKEND["client_id"], BACKEND_SECRET),
    )
    assert response.status_code == 200, response.text
    return response.json()


def patient_token(
    http: httpx.Client, iss: str, scope: str, patient: str | None = None
) -> dict[str, Any]:
    """Standalone launch with PKCE S256 against an ``--auto-approve`` sandbox."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": PUBLIC["client_id"],
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": state,
        "aud": iss,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if patient:
        params["login_hint"] = patient
    response = http.get("/auth/authorize", params=params)
    assert response.status_code in (302, 303), response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["state"] == [state]
    token = http.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": PUBLIC["client_id"],
        },
    )
    assert token.status_code == 200, token.text
    return token.json()


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}
