"""Getting real access tokens from the sandbox's authorization server, with plain httpx.

Written from the SMART specs and independent of ``jupyterhub_smart.smart``, so
that the notebook tests do not lean on the client-side SMART code.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from conftest import PUBLIC_CLIENT, SYMMETRIC_CLIENT, TEST_REDIRECT_URI
from sandbox_process import SandboxProcess

#: Every secret the notebook tests handle, for the log-hygiene checks.
SEEN_SECRETS: set[str] = {SYMMETRIC_CLIENT["client_secret"]}


def system_token(sandbox: SandboxProcess, scope: str = "system/*.rs") -> dict[str, Any]:
    """A Backend Services token (client_credentials, confidential-symmetric client)."""
    response = httpx.post(
        f"{sandbox.origin}/auth/token",
        auth=(SYMMETRIC_CLIENT["client_id"], SYMMETRIC_CLIENT["client_secret"]),
        data={"grant_type": "client_credentials", "scope": scope},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    SEEN_SECRETS.add(body["access_token"])
    return body


def patient_login(
    sandbox: SandboxProcess,
    scope: str = "launch/patient openid fhirUser patient/*.rs",
    patient: str | None = None,
) -> dict[str, Any]:
    """A standalone launch (auth code + PKCE, public client) auto-approved by the sandbox."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "response_type": "code",
        "client_id": PUBLIC_CLIENT["client_id"],
        "redirect_uri": TEST_REDIRECT_URI,
        "scope": scope,
        "state": secrets.token_urlsafe(16),
        "aud": sandbox.iss,
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    if patient:
        params["login_hint"] = f"Patient/{patient}"
    with httpx.Client(base_url=sandbox.origin) as http:
        redirect = http.get("/auth/authorize", params=params)
        assert redirect.status_code in (302, 303), redirect.text
        query = parse_qs(urlsplit(redirect.headers["location"]).query)
        assert "code" in query, query
        code = query["code"][0]
        SEEN_SECRETS.add(code)
        response = http.post(
            "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": TEST_REDIRECT_URI,
                "code_verifier": verifier,
                "client_id": PUBLIC_CLIENT["client_id"],
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    for key in ("access_token", "refresh_token", "id_token"):
        if body.get(key):
            SEEN_SECRETS.add(body[key])
    return body
