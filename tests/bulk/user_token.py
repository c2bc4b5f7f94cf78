"""A user's SMART token from an ``--auto-approve`` sandbox (standalone launch, PKCE S256), plain httpx."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx

REDIRECT_URI = "http://127.0.0.1:9/bulk-tests/callback"
PUBLIC_CLIENT = {"client_id": "bulk-public", "type": "public", "redirect_uris": [REDIRECT_URI]}


def patient_token(http: httpx.Client, iss: str, patient: str) -> str:
    """An access token with ``patient/*.rs`` for ``patient``."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    state = secrets.token_urlsafe(16)
    response = http.get(
        "/auth/authorize",
        params={
            "response_type": "code",
            "client_id": PUBLIC_CLIENT["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "launch/patient patient/*.rs",
            "state": state,
            "aud": iss,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": patient,
        },
    )
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
            "client_id": PUBLIC_CLIENT["client_id"],
        },
    )
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["patient"] == patient
    return str(body["access_token"])
