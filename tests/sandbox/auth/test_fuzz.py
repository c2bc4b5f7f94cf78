"""Seeded random garbage at every authorization-server and EHR endpoint: never a 5xx."""

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


GET_PATHS = [
    "/fhir/Patient",
    "/fhir/Observation",
    "/fhir/Encounter",
    "/fhir/Patient/patient-00001",
    "/fhir/Observation/patient-00001-obs-00001/_history/1",
    "/fhir/metadata",
    "/fhir/.well-known/smart-configuration",
    "/auth/authorize",
    "/auth/jwks",
    "/auth/login",
    "/auth/consent",
    "/auth/select-patient",
    "/ehr",
    "/ehr/launch",
    "/ehr/sessions",
    "/ehr/smart-style.json",
    "/",
]
ODD_QUERIES = [
    "?", "??", "?&&&", "?=", "?==", "?%", "?%%%", "?%FF", "?a=%FF", "?a=%C0%AF", "?a=%ED%A0%80",
    "?_count=1&_count", "?_count=%00", "?_count=%C2%B9", "?_count=%EF%BC%95", "?_count=1e3",
    "?_count=99999999999999999999999", "?_format=%00", "?name=" + "%E2%82%AC" * 300,
    "?date=ge" + "9" * 40, "?date=le9999-12-31T23:59:59%2B14:00", "?date=ge0001-01-01T00:00:00-14:00",
    "?date=9999", "?birthdate=ge-0001", "?_sort=date,-date", "?_cursor=d-999999999999999999.1&_sort=date",
    "?patient=Patient/", "?patient=/", "?subject:Group=x", "?code=%5C%7C", "?offset=%00",
    "?app=http://[::1&patient=patient-00001", "?app=http://a:99999/&patient=patient-00001",
    "?app=http://127.0.0.1:9/callback&patient=patient-00001&context=Foo/../../x",
    "?app=http://127.0.0.1:9/callback&patient=patient-00001&encounter=%FF",
    "?req=" + "x" * 3000, "?" + "&".join(f"a{i}=1" for i in range(1500)),
    "?client_id=app-public&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback&response_type=code"
    "&state=x&code_challenge=" + "a" * 43 + "&code_challenge_method=S256&scope=launch%2Fpatient"
    "&aud=%FF&login_hint=%FF&nonce=" + "n" * 3000,
]  # fmt: skip


def test_odd_query_strings_on_every_get_endpoint(http: httpx.Client, sbx: SandboxProcess) -> None:
    """The fuzz pass that found ``_count=¹``, year-9999 dates and ``app=http://[::1``, kept."""
    from .flow import authorize, exchange

    auth = authorize(http, sbx.iss, "app-public", "user/*.rs")
    token = exchange(http, auth, "app-public").json()["access_token"]
    failures = []
    for path in GET_PATHS:
        for query in ODD_QUERIES:
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                response = http.get(path + query, headers=headers)
                if response.status_code >= 500:
                    failures.append((path, query[:60], response.status_code))
    assert not failures, failures[:5]
    assert "internal error" not in sbx.log_text()


def test_odd_bodies_and_content_types_on_every_post_endpoint(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    rng = random.Random(1129)
    paths = [
        "/auth/token", "/auth/introspect", "/auth/revoke", "/auth/authorize", "/auth/login",
        "/auth/consent", "/auth/select-patient", "/auth/logout", "/ehr/revoke", "/fhir/AuditEvent",
        "/fhir/Observation/_search", "/fhir/Patient", "/fhir/metadata", "/ehr/launch",
    ]  # fmt: skip
    content_types = [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/x-www-form-urlencoded; charset=nonsense",
        'application/x-www-form-urlencoded; charset="',
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data; boundary=",
        "application/json",
        "application/fhir+json; charset=utf-16",
        "text/plain",
        "",
        'a/b; c="\\"',
    ]
    bodies = [
        b"",
        b"grant_type=client_credentials&scope=system%2F*.rs",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"[1,2]",
        b"null",
        b'"str"',
        b'--xyz\r\nContent-Disposition: form-data; name="grant_type"\r\n\r\nx\r\n--xyz--\r\n',
        b"--xyz\r\nbroken",
        b'{"resourceType":"AuditEvent"}',
        b"a=%FF%FE&b=\xff",
        b"=&=&&",
        b"%",
    ]
    failures = []
    for _ in range(500):
        path, content_type, body = rng.choice(paths), rng.choice(content_types), rng.choice(bodies)
        headers = {"Content-Type": content_type} if content_type else {}
        if rng.random() < 0.3:
            headers["Authorization"] = rng.choice(["Bearer x", "Basic YTpi", "Basic !!"])
        response = http.post(path, content=body, headers=headers)
        if response.status_code >= 500:
            failures.append((path, content_type, body[:20], response.status_code))
    assert not failures, failures[:5]
    assert "internal error" not in sbx.log_text()
