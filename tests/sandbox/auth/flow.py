"""A plain-httpx SMART client for driving the sandbox in tests.

Written from the specs, independently of ``jupyterhub_smart.smart`` (the
sandbox must catch client bugs, so the tests do not reuse client code).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

REDIRECT_URI = "http://127.0.0.1:9/callback"
OTHER_REDIRECT_URI = "http://127.0.0.2:9/callback"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Authorization:
    """One authorize request and what came back."""

    response: httpx.Response
    verifier: str
    state: str
    nonce: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str:
        return self.response.headers.get("location", "")

    @property
    def result(self) -> dict[str, str]:
        return query_of(self.location)

    @property
    def code(self) -> str:
        result = self.result
        assert "code" in result, f"no code in redirect: {self.response.status_code} {result}"
        return result["code"]


def authorize(
    http: httpx.Client,
    iss: str,
    client_id: str,
    scope: str,
    *,
    redirect_uri: str = REDIRECT_URI,
    launch: str | None = None,
    pkce: bool = True,
    method: str = "S256",
    aud: str | None = None,
    extra: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> Authorization:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    nonce = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "aud": aud if aud is not None else iss,
    }
    if pkce:
        params["code_challenge"] = verifier if method == "plain" else challenge
        params["code_challenge_method"] = method
    if launch:
        params["launch"] = launch
    params.update(extra or {})
    for name in drop:
        params.pop(name, None)
    response = http.get("/auth/authorize", params=params)
    return Authorization(response, verifier, state, nonce, params)


def exchange(
    http: httpx.Client,
    auth: Authorization,
    client_id: str,
    *,
    verifier: str | None = None,
    redirect_uri: str = REDIRECT_URI,
    client_auth: dict[str, Any] | None = None,
) -> httpx.Response:
    """Redeem an authorization's code at the token endpoint."""
    data = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier if verifier is not None else auth.verifier,
    }
    headers: dict[str, str] = {}
    if client_auth:
        data.update(client_auth.get("data", {}))
        headers.update(client_auth.get("headers", {}))
    else:
        data["client_id"] = client_id
    return http.post("/auth/token", data=data, headers=headers)


def basic(client_id: str, secret: str) -> dict[str, Any]:
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"headers": {"Authorization": f"Basic {token}"}}


def assertion(
    key: RSAKey | ECKey,
    client_id: str,
    token_url: str,
    *,
    alg: str,
    exp_in: int = 240,
    jti: str | None = None,
    aud: str | None = None,
    kid: str | None = None,
) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud or token_url,
        "exp": now + exp_in,
        "iat": now,
        "jti": jti or str(uuid.uuid4()),
    }
    header = {"alg": alg, "typ": "JWT", "kid": kid or key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])


def jwt_auth(client_assertion: str) -> dict[str, Any]:
    return {"data": {"client_assertion_type": ASSERTION_TYPE, "client_assertion": client_assertion}}


def patient_ids(http: httpx.Client) -> list[str]:
    """Patient ids listed by the EHR simulator's page."""
    page = http.get("/ehr")
    assert page.status_code == 200
    return re.findall(r'name="patient" value="([^"]+)"', page.text)


def ehr_launch(http: httpx.Client, app: str, patient: str, **extra: str) -> httpx.Response:
    return http.get("/ehr/launch", params={"app": app, "patient": patient, **extra})
