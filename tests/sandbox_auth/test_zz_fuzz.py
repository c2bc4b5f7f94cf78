"""Seeded random garbage at every authorization-server and EHR endpoint: never a 5xx.

Runs before the log-hygiene test (file order) on the shared sandbox.
"""

from __future__ import annotations

import random
from urllib.parse import urlencode

import httpx
from sandbox_process import SandboxProcess

PARAMS = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "launch",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "login_hint",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "client_assertion",
    "client_assertion_type",
    "token",
    "token_type_hint",
    "req",
    "user",
    "patient",
    "decision",
    "csrf_token",
    "grant",
    "app",
    "encounter",
    "practitioner",
    "context",
    "offset",
]
VALUES = [
    "",
    " ",
    "code",
    "app-public",
    "http://127.0.0.1:9/callback",
    "S256",
    "plain",
    "none",
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "patient/*.rs",
    "user/*.read",
    "system/*.rs",
    "launch",
    "openid fhirUser",
    'a"b',
    "\\",
    "\u00e9\u00e8",
    "\u202e",
    "%00",
    "x" * 300,
    "-1",
    "99999999999999999999",
    "[]",
    "{}",
    "null",
    "patient/Observation.rs?",
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "a.b.c",
    "e30.e30.e30",
    "Patient/../../etc",
    "javascript:alert(1)",
    "http://evil.example/",
    "approve",
    "deny",
]
ENDPOINTS = [
    ("GET", "/auth/authorize"),
    ("POST", "/auth/authorize"),
    ("POST", "/auth/token"),
    ("POST", "/auth/introspect"),
    ("POST", "/auth/revoke"),
    ("GET", "/auth/login"),
    ("POST", "/auth/login"),
    ("GET", "/auth/select-patient"),
    ("POST", "/auth/select-patient"),
    ("GET", "/auth/consent"),
    ("POST", "/auth/consent"),
    ("POST", "/auth/logout"),
    ("GET", "/auth/jwks"),
    ("GET", "/ehr"),
    ("GET", "/ehr/launch"),
    ("GET", "/ehr/sessions"),
    ("POST", "/ehr/revoke"),
    ("GET", "/fhir/.well-known/smart-configuration"),
]


def test_random_input_never_causes_a_server_error(http: httpx.Client, sbx: SandboxProcess) -> None:
    rng = random.Random(20261129)
    failures = []
    for _ in range(400):
        method, path = rng.choice(ENDPOINTS)
        params = [(rng.choice(PARAMS), rng.choice(VALUES)) for _ in range(rng.randint(0, 8))]
        headers = {}
        if rng.random() < 0.2:
            headers["Authorization"] = rng.choice(
                ["Basic Og==", "Basic !!", "Bearer x", "Basic YTpi"]
            )
        if method == "GET":
            response = http.get(path, params=params, headers=headers)
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = http.post(path, content=urlencode(params), headers=headers)
        if response.status_code >= 500:
            failures.append((method, path, params, response.status_code))
    assert not failures, failures[:5]
    assert "internal error" not in sbx.log_text()


def test_mutated_valid_requests_never_cause_a_server_error(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    """Start from requests that work and break one or two parameters at a time."""
    from .flow import authorize, pkce_pair

    rng = random.Random(4242)
    failures = []
    _verifier, challenge = pkce_pair()
    base_authorize = {
        "response_type": "code",
        "client_id": "app-public",
        "redirect_uri": "http://127.0.0.1:9/callback",
        "scope": "openid fhirUser launch/patient patient/*.rs offline_access",
        "state": "s" * 22,
        "nonce": "n" * 22,
        "aud": sbx.iss,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    for _ in range(150):
        params = dict(base_authorize)
        for _ in range(rng.randint(1, 2)):
            params[rng.choice([*base_authorize, rng.choice(PARAMS)])] = rng.choice(VALUES)
        response = http.get("/auth/authorize", params=params)
        if response.status_code >= 500:
            failures.append(("authorize", params, response.status_code))
    for _ in range(100):
        auth = authorize(http, sbx.iss, "app-public", "launch/patient patient/*.rs offline_access")
        data = {
            "grant_type": "authorization_code",
            "code": auth.code,
            "redirect_uri": "http://127.0.0.1:9/callback",
            "code_verifier": auth.verifier,
            "client_id": "app-public",
        }
        for _ in range(rng.randint(1, 2)):
            data[rng.choice([*data, rng.choice(PARAMS)])] = rng.choice(VALUES)
        response = http.post("/auth/token", data=data)
        if response.status_code >= 500:
            failures.append(("token", data, response.status_code))
    assert not failures, failures[:5]
    assert "internal error" not in sbx.log_text()
