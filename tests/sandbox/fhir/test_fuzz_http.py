"""Seeded fuzz of the FHIR endpoints: whatever the input, never a 5xx, always FHIR JSON."""

from __future__ import annotations

import random
from typing import Any

import httpx

from .helpers import FHIR_JSON

TYPES = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
    "Practitioner",
    "AuditEvent",
    "Foo",
]
NAMES = [
    "_id", "name", "family", "given", "birthdate", "gender", "identifier", "patient", "subject",
    "subject:Patient", "code", "category", "date", "_count", "_sort", "_summary", "_format", "_cursor",
    "name:contains", "code:not", "date:missing", "_include", "unknown", "",
]  # fmt: skip
VALUES = [
    "", ",", "|", "\\", "\\,", "a|b|c", "http://loinc.org|8867-4", "8867-4", "vital-signs",
    "patient-00001", "Patient/patient-00001", "Group/1", "http://x/fhir/Patient/1", "ge2021",
    "lt2021-02-30", "eq2021-03-04T10:00Z", "2021-03-04T10:00:00 01:00", "ap2020", "9" * 30,
    "-1", "0", "1000000", "d1.2", "s" + "9" * 25, "d-5.3", "count", "date", "-date", "json", "xml",
    "\x00", "é", "😀" * 50, "x" * 1500, "' OR 1=1 --", "%00", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
]  # fmt: skip


def test_search_fuzz_never_5xx(http: httpx.Client, system_token: dict[str, Any]) -> None:
    rng = random.Random(20250701)
    headers = {"Authorization": f"Bearer {system_token['access_token']}"}
    statuses: set[int] = set()
    for _ in range(400):
        resource_type = rng.choice(TYPES)
        params = [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randint(0, 4))]
        response = http.get(f"/fhir/{resource_type}", params=params, headers=headers)
        assert response.status_code < 500, (resource_type, params, response.text)
        assert response.headers["content-type"].startswith(FHIR_JSON), (resource_type, params)
        statuses.add(response.status_code)
    assert {200, 400, 404} <= statuses


def test_path_fuzz_never_5xx(http: httpx.Client, system_token: dict[str, Any]) -> None:
    rng = random.Random(7)
    headers = {"Authorization": f"Bearer {system_token['access_token']}"}
    pieces = [
        "Patient",
        "Observation",
        "patient-00001",
        "_history",
        "1",
        "_search",
        "metadata",
        "..",
        "%2F",
        "x" * 70,
        "é",
        "AuditEvent",
    ]
    for _ in range(200):
        path = "/fhir/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        method = rng.choice(["GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
        response = http.request(method, path, headers=headers, content=b"{}")
        assert response.status_code < 500, (method, path, response.text)
