"""Reads, authorization and refusals over HTTP against a real sandbox process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from leak_scan import Ledger
from sandbox_process import SandboxProcess, run_sandbox

from .helpers import FHIR_JSON, audit_event, fhir_get, ids, outcome_text, search, search_all
from .tokens import BACKEND, BACKEND_SECRET, CLIENTS, PUBLIC, backend_token, bearer, patient_token


def test_metadata_is_public_and_names_the_oauth_endpoints(
    http: httpx.Client, fhir_sandbox: SandboxProcess
) -> None:
    response = http.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (oauth,) = [
        e
        for e in security["extension"]
        if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    ]
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    auth = f"{fhir_sandbox.origin}/auth"
    assert uris == {
        "authorize": f"{auth}/authorize",
        "token": f"{auth}/token",
        "introspect": f"{auth}/introspect",
        "revoke": f"{auth}/revoke",
    }
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert {p["name"] for p in observation["searchParam"]} >= {
        "patient",
        "code",
        "category",
        "date",
    }


def test_read(http: httpx.Client, system_token: dict[str, Any]) -> None:
    response = fhir_get(http, "Patient/patient-00001", system_token)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    patient = response.json()
    assert patient["resourceType"] == "Patient" and patient["id"] == "patient-00001"
    mrn = patient["identifier"][0]
    assert mrn["type"]["coding"][0]["code"] == "MR" and mrn["system"] and mrn["value"]
    observation = fhir_get(http, "Observation/patient-00001-obs-00001", system_token).json()
    assert observation["subject"] == {"reference": "Patient/patient-00001"}
    assert observation["effectiveDateTime"][-6] in "+-"  # a timezone offset
    practitioners = search_all(http, "Practitioner", system_token)
    assert len(practitioners) >= 3 and practitioners[0]["id"] == "practitioner-1"


def test_read_unknown_and_malformed_ids(http: httpx.Client, system_token: dict[str, Any]) -> None:
    missing = fhir_get(http, "Patient/patient-99999", system_token)
    assert missing.status_code == 404
    assert "not known or not visible" in outcome_text(missing)
    malformed = fhir_get(http, "Patient/" + "x" * 65, system_token)
    assert malformed.status_code == 400
    assert "not a valid FHIR id" in outcome_text(malformed)
    unknown_type = fhir_get(http, "Specimen/1", system_token)
    assert unknown_type.status_code == 404
    assert "not supported by this server" in outcome_text(unknown_type)


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("PUT", "/fhir/Patient/patient-00001", "system/Patient.u"),
        ("DELETE", "/fhir/Patient/patient-00001", "system/Patient.d"),
        ("PATCH", "/fhir/Observation/patient-00001-obs-00001", "system/Observation.u"),
        ("POST", "/fhir/Patient", "system/Patient.c"),
    ],
)
def test_writes_need_write_scopes(
    http: httpx.Client, system_token: dict[str, Any], method: str, path: str, needed: str
) -> None:
    response = http.request(
        method, path, headers=bearer(system_token), json={"resourceType": "Patient"}
    )
    assert response.status_code == 403
    assert needed in outcome_text(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/fhir/Patient"),
        ("PUT", "/fhir/Observation"),
        ("POST", "/fhir/Patient/patient-00001"),
    ],
)
def test_writes_without_a_meaning_are_405(
    http: httpx.Client, system_token: dict[str, Any], method: str, path: str
) -> None:
    response = http.request(
        method, path, headers=bearer(system_token), json={"resourceType": "Patient"}
    )
    assert response.status_code == 405
    assert "not supported" in outcome_text(response)


def test_missing_token_is_401(http: httpx.Client) -> None:
    response = fhir_get(http, "Patient", None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="sandbox"')
    assert "Authorization: Bearer" in outcome_text(response)
    read = fhir_get(http, "Patient/patient-00001", None)
    assert read.status_code == 401


@pytest.mark.parametrize(
    "header", ["Bearer not-a-token", "Basic Zm9vOmJhcg==", "Bearer", "Bearer " + "a" * 5000]
)
def test_bad_authorization_header_is_401(http: httpx.Client, header: str) -> None:
    response = http.get("/fhir/Patient", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert "error=" in response.headers["www-authenticate"]
    outcome_text(response)


def test_revoked_token_is_401(http: httpx.Client, secret_scan: Ledger) -> None:
    token = backend_token(http)
    secret_scan.add(token["access_token"])
    assert fhir_get(http, "Patient", token).status_code == 200
    revoked = http.post(
        "/auth/revoke",
        data={"token": token["access_token"], "token_type_hint": "access_token"},
        auth=(BACKEND["client_id"], BACKEND_SECRET),
    )
    assert revoked.status_code == 200
    response = fhir_get(http, "Patient", token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "revoked" in outcome_text(response)


def test_expired_token_is_401(tmp_path: Any, secret_scan: Ledger) -> None:
    import time

    with (
        run_sandbox(
            tmp_path, CLIENTS, patients=2, extra_args=["--access-token-lifetime", "1"]
        ) as sbx,
        httpx.Client(base_url=sbx.origin, timeout=60) as client,
    ):
        token = backend_token(client)
        secret_scan.add(token["access_token"])
        assert token["expires_in"] <= 1
        time.sleep(2.1)  # past expires_in: the token is now expired
        response = fhir_get(client, "Patient", token)
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert "expired" in outcome_text(response)
        assert token["access_token"] not in sbx.log_text()


def test_missing_scope_is_403_naming_it(
    http: httpx.Client, fhir_sandbox: SandboxProcess, secret_scan: Ledger
) -> None:
    token = patient_token(
        http, fhir_sandbox.iss, "launch/patient patient/Patient.rs", patient="patient-00003"
    )
    secret_scan.add(token["access_token"])
    assert fhir_get(http, "Patient/patient-00003", token).status_code == 200
    search_response = fhir_get(http, "Observation", token)
    assert search_response.status_code == 403
    text = outcome_text(search_response)
    assert "requires patient/Observation.s, user/Observation.s or system/Observation.s" in text
    assert 'error="insufficient_scope"' in search_response.headers["www-authenticate"]
    read_response = fhir_get(http, "Observation/patient-00003-obs-00001", token)
    assert read_response.status_code == 403
    assert "patient/Observation.r" in outcome_text(read_response)


def test_v1_read_scope_allows_read_and_search(
    http: httpx.Client, fhir_sandbox: SandboxProcess, secret_scan: Ledger
) -> None:
    token = patient_token(
        http, fhir_sandbox.iss, "launch/patient patient/Observation.read", patient="patient-00003"
    )
    secret_scan.add(token["access_token"])
    found = search_all(http, "Observation", token, {"_count": 1000})
    assert found and {o["subject"]["reference"] for o in found} == {"Patient/patient-00003"}
    assert fhir_get(http, f"Observation/{found[0]['id']}", token).status_code == 200


def test_patient_scope_sees_only_its_patient(
    http: httpx.Client, patient2_token: dict[str, Any], system_token: dict[str, Any]
) -> None:
    mine = search_all(http, "Observation", patient2_token, {"_count": 1000})
    assert mine
    assert {o["subject"]["reference"] for o in mine} == {"Patient/patient-00002"}
    everyone = search(http, "Observation", system_token, {"_summary": "count"})["total"]
    assert len(mine) < everyone
    assert ids(search_all(http, "Patient", patient2_token)) == ["patient-00002"]
    assert search_all(http, "Observation", patient2_token, {"patient": "patient-00001"}) == []
    assert (
        search(
            http, "Condition", patient2_token, {"patient": "patient-00001", "_summary": "count"}
        )["total"]
        == 0
    )
    assert fhir_get(http, "Patient/patient-00002", patient2_token).status_code == 200


def test_patient_scope_cannot_read_another_patients_resources(
    http: httpx.Client, patient2_token: dict[str, Any], system_token: dict[str, Any]
) -> None:
    other = "Observation/patient-00001-obs-00001"
    assert fhir_get(http, other, system_token).status_code == 200
    for path in (other, "Patient/patient-00001", "Encounter/patient-00001-enc-0001"):
        response = fhir_get(http, path, patient2_token)
        assert response.status_code == 404, path
        # The same answer as an id that does not exist: no probing for ids.
        assert outcome_text(response) == f"{path} is not known or not visible to this token"
    # Practitioners are outside every patient compartment.
    assert fhir_get(http, "Practitioner/practitioner-1", patient2_token).status_code == 404


def test_v2_category_restriction(
    http: httpx.Client,
    fhir_sandbox: SandboxProcess,
    system_token: dict[str, Any],
    secret_scan: Ledger,
) -> None:
    token = patient_token(
        http,
        fhir_sandbox.iss,
        "launch/patient patient/Observation.rs?category=vital-signs",
        patient="patient-00002",
    )
    secret_scan.add(token["access_token"])
    assert "patient/Observation.rs?category=vital-signs" in token["scope"].split()
    visible = search_all(http, "Observation", token, {"_count": 1000})
    full = search_all(
        http, "Observation", system_token, {"patient": "patient-00002", "_count": 1000}
    )

    def category(o: dict[str, Any]) -> str:
        return o["category"][0]["coding"][0]["code"]

    assert ids(visible) == [o["id"] for o in full if category(o) == "vital-signs"]
    labs = [o for o in full if category(o) == "laboratory"]
    assert labs, "the fixture patient needs a laboratory Observation"
    assert search_all(http, "Observation", token, {"category": "laboratory"}) == []
    assert fhir_get(http, f"Observation/{labs[0]['id']}", token).status_code == 404
    assert fhir_get(http, f"Observation/{visible[0]['id']}", token).status_code == 200


def test_auditevent_create(http: httpx.Client, secret_scan: Ledger) -> None:
    token = backend_token(http, "system/AuditEvent.c system/AuditEvent.rs")
    secret_scan.add(token["access_token"])
    response = http.post(
        "/fhir/AuditEvent",
        content=httpx.Request("POST", "/", json=audit_event()).content,
        headers={**bearer(token), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"] != "client-chosen-id-is-ignored"
    assert response.headers["location"].endswith(f"/fhir/AuditEvent/{created['id']}/_history/1")
    read = fhir_get(http, f"AuditEvent/{created['id']}", token)
    assert read.status_code == 200 and read.json()["entity"] == audit_event()["entity"]
    location = http.get(response.headers["location"], headers=bearer(token))
    assert location.status_code == 200 and location.json() == read.json()
    other_version = fhir_get(http, f"AuditEvent/{created['id']}/_history/2", token)
    assert other_version.status_code == 404
    assert "no version" in outcome_text(other_version)


def test_auditevent_create_needs_the_c_scope(
    http: httpx.Client, system_token: dict[str, Any]
) -> None:
    response = http.post("/fhir/AuditEvent", json=audit_event(), headers=bearer(system_token))
    assert response.status_code == 403
    assert "system/AuditEvent.c" in outcome_text(response)


def test_patient_scoped_auditevent_only_about_own_patient(
    http: httpx.Client, fhir_sandbox: SandboxProcess, secret_scan: Ledger
) -> None:
    token = patient_token(
        http, fhir_sandbox.iss, "launch/patient patient/AuditEvent.c", patient="patient-00002"
    )
    secret_scan.add(token["access_token"])
    ok = http.post("/fhir/AuditEvent", json=audit_event("patient-00002"), headers=bearer(token))
    assert ok.status_code == 201, ok.text
    other = http.post("/fhir/AuditEvent", json=audit_event("patient-00001"), headers=bearer(token))
    assert other.status_code == 403
    assert "its own patient" in outcome_text(other)


@pytest.mark.parametrize(
    ("where", "extra"),
    [
        ("a second entity", {"entity": [{"what": {"reference": "Patient/patient-00001"}}]}),
        ("the agent", {"agent": [{"who": {"reference": "Patient/patient-00001"}}]}),
        (
            "an absolute reference",
            {"entity": [{"what": {"reference": "http://x.test/fhir/Patient/patient-00001"}}]},
        ),
        (
            "a versioned reference in an extension",
            {
                "extension": [
                    {
                        "url": "http://x.test/subject",
                        "valueReference": {"reference": "Patient/patient-00001/_history/1"},
                    }
                ]
            },
        ),
        (
            "a contained Patient",
            {"contained": [{"resourceType": "Patient", "id": "someone-else"}]},
        ),
    ],
)
def test_patient_scoped_auditevent_may_name_no_other_patient_anywhere(
    http: httpx.Client,
    fhir_sandbox: SandboxProcess,
    secret_scan: Ledger,
    where: str,
    extra: dict[str, Any],
) -> None:
    token = patient_token(
        http, fhir_sandbox.iss, "launch/patient patient/AuditEvent.c", patient="patient-00002"
    )
    secret_scan.add(token["access_token"])
    event = audit_event("patient-00002")
    for key, value in extra.items():
        event[key] = (event.get(key) or []) + value
    response = http.post("/fhir/AuditEvent", json=event, headers=bearer(token))
    assert response.status_code == 403, where
    assert "may name no other patient" in outcome_text(response)
    versioned = audit_event("patient-00002")
    versioned["agent"].append({"who": {"reference": "Patient/patient-00002/_history/1"}})
    response = http.post("/fhir/AuditEvent", json=versioned, headers=bearer(token))
    assert response.status_code == 201, response.text


def _deep(levels: int) -> bytes:
    return b'{"resourceType":"AuditEvent","x":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "expected"),
    [
        (b"{not json", "application/fhir+json", 400, "not valid JSON"),
        (b"[1, 2]", "application/fhir+json", 400, "must be a JSON object"),
        (
            b'{"resourceType": "Patient"}',
            "application/fhir+json",
            400,
            "resourceType must be 'AuditEvent'",
        ),
        (
            b'{"resourceType": "AuditEvent"}',
            "application/fhir+json",
            400,
            "agent (a non-empty list) is required",
        ),
        (b"\xff\xfe garbage", "application/fhir+json", 400, "not valid JSON"),
        (_deep(5000), "application/fhir+json", 400, "not valid JSON"),
        (
            b'{"resourceType": "AuditEvent", "pad": "' + b"x" * 70_000 + b'"}',
            "application/fhir+json",
            413,
            "at most",
        ),
        (
            b"resourceType=AuditEvent",
            "application/x-www-form-urlencoded",
            415,
            "application/fhir+json",
        ),
    ],
)
def test_bad_auditevent_bodies_are_4xx(
    http: httpx.Client,
    secret_scan: Ledger,
    body: bytes,
    content_type: str,
    status: int,
    expected: str,
) -> None:
    token = backend_token(http, "system/AuditEvent.c")
    secret_scan.add(token["access_token"])
    response = http.post(
        "/fhir/AuditEvent", content=body, headers={**bearer(token), "Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert expected in outcome_text(response)


def test_body_over_the_server_cap_is_413(http: httpx.Client, system_token: dict[str, Any]) -> None:
    response = http.post(
        "/fhir/AuditEvent",
        content=b"x" * (3 * 1024 * 1024),
        headers={**bearer(system_token), "Content-Type": "application/fhir+json"},
    )
    assert 400 <= response.status_code < 500


def test_public_client_registration_is_used(fhir_sandbox: SandboxProcess) -> None:
    assert PUBLIC in fhir_sandbox.clients


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/fhir/Patient/patient-00001/everything/else", 404),
        ("PUT", "/fhir/metadata", 405),
        ("GET", "/fhir/Observation/_search", 400),
    ],
)
def test_other_errors_are_operation_outcomes(
    http: httpx.Client, system_token: dict[str, Any], method: str, path: str, status: int
) -> None:
    response = http.request(method, path, headers=bearer(system_token))
    assert response.status_code == status
    outcome_text(response)


def test_user_scope_sees_every_patient(
    http: httpx.Client, fhir_sandbox: SandboxProcess, secret_scan: Ledger
) -> None:
    token = patient_token(http, fhir_sandbox.iss, "openid fhirUser user/Observation.rs")
    secret_scan.add(token["access_token"])
    found = search_all(http, "Observation", token, {"_count": 1000})
    assert len({o["subject"]["reference"] for o in found}) == 6
    assert fhir_get(http, "Observation/patient-00005-obs-00001", token).status_code == 200
    refused = fhir_get(http, "Patient/patient-00005", token)
    assert refused.status_code == 403
    assert "user/Patient.r" in outcome_text(refused)
