"""Small HTTP helpers shared by the FHIR integration tests."""

from __future__ import annotations

from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"


def fhir_get(
    http: httpx.Client, path: str, token: dict[str, Any] | None, params: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token['access_token']}"} if token else {}
    return http.get(f"/fhir/{path}", params=params, headers=headers)


def search(
    http: httpx.Client, resource_type: str, token: dict[str, Any], params: Any = None
) -> dict[str, Any]:
    """One searchset page; asserts it is a 200 FHIR Bundle."""
    response = fhir_get(http, resource_type, token, params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    return bundle


def search_all(
    http: httpx.Client, resource_type: str, token: dict[str, Any], params: Any = None
) -> list[dict[str, Any]]:
    """Every match, following ``next`` links."""
    bundle = search(http, resource_type, token, params)
    resources = [e["resource"] for e in bundle.get("entry", [])]
    while True:
        next_links = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not next_links:
            return resources
        response = http.get(
            next_links[0], headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        assert response.status_code == 200, response.text
        bundle = response.json()
        resources.extend(e["resource"] for e in bundle.get("entry", []))


def ids(resources: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in resources]


def outcome_text(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome response (asserting it is one)."""
    assert response.headers["content-type"].startswith(FHIR_JSON), response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


def audit_event(patient: str = "patient-00002") -> dict[str, Any]:
    """An AuditEvent a client may create, about ``patient``."""
    return {
        "resourceType": "AuditEvent",
        "id": "client-chosen-id-is-ignored",
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110112",
            "display": "Query",
        },
        "action": "E",
        "recorded": "2025-07-01T12:00:00Z",
        "outcome": "0",
        "agent": [{"who": {"display": "tester"}, "requestor": True}],
        "source": {"observer": {"display": "jupyterhub-smart tests"}},
        "entity": [{"what": {"reference": f"Patient/{patient}"}}],
    }
