"""A writable sandbox of its own for the write, history, include and operation tests.

Those tests change data, so they do not share the package's sandbox (whose
search tests compute expectations from its contents). Two patients matter:
``A`` (the token's patient) and ``B`` (the other patient whose data must
never show through A's token).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from leak_scan import Ledger
from sandbox_process import run_sandbox

from .tokens import PUBLIC, REDIRECT_URI

A = "patient-00001"
B = "patient-00002"
WRITER_SECRET = "fhir-ops-writer-secret-7f3c2a91"
WRITER = {
    "client_id": "fhir-writer",
    "type": "confidential-symmetric",
    "client_secret": WRITER_SECRET,
    "redirect_uris": [REDIRECT_URI],
    "scope": "system/*.cruds",
}


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, secret_scan: Ledger) -> Iterator[httpx.Client]:
    """An HTTP client on a fresh sandbox (3 patients) for one test module."""
    secret_scan.add(WRITER_SECRET, kind="client secret")
    with (
        run_sandbox(
            tmp_path_factory.mktemp("sandbox-ops"), [PUBLIC, WRITER], patients=3, seed=5
        ) as process,
        httpx.Client(base_url=process.origin, timeout=60) as client,
    ):
        client.headers["X-Test-Iss"] = process.iss
        yield client


def iss(http: httpx.Client) -> str:
    return http.headers["X-Test-Iss"]


def system(
    http: httpx.Client, secret_scan: Ledger, scope: str = "system/*.cruds"
) -> dict[str, str]:
    """Headers with a Backend Services token of ``scope``."""
    response = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(str(WRITER["client_id"]), WRITER_SECRET),
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    secret_scan.add(token)
    return {"Authorization": f"Bearer {token}"}


def launched(
    http: httpx.Client, secret_scan: Ledger, scope: str, patient: str | None = A
) -> dict[str, str]:
    """Headers with a standalone-launch token of ``scope`` (for ``patient``)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "response_type": "code",
        "client_id": PUBLIC["client_id"],
        "redirect_uri": REDIRECT_URI,
        "scope": scope,
        "state": secrets.token_urlsafe(16),
        "aud": iss(http),
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    if patient:
        params["login_hint"] = patient
    response = http.get("/auth/authorize", params=params)
    assert response.status_code in (302, 303), response.text
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    token = http.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "client_id": PUBLIC["client_id"],
        },
    )
    assert token.status_code == 200, token.text
    body = token.json()
    secret_scan.add(body["access_token"])
    if patient and "launch/patient" in scope:
        assert body["patient"] == patient
    return {"Authorization": f"Bearer {body['access_token']}"}


def observation(patient: str, code: str = "8867-4", **extra: Any) -> dict[str, Any]:
    """A heart-rate (or other LOINC) Observation about ``patient``."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory" if code == "2339-0" else "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2025-06-29T10:00:00Z",
        "valueQuantity": {"value": 70, "unit": "beats/minute"},
        **extra,
    }


def entries(bundle: dict[str, Any], mode: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if mode is None or e.get("search", {}).get("mode") == mode
    ]


def outcome(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(i.get("diagnostics", "") for i in body["issue"])
