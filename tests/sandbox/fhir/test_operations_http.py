"""Includes, $everything, chains, _has, $lastn, _elements and terminology over HTTP.

Each scope case plants a second patient's data (patient B) where a leaky
server would return it through patient A's token, and checks it is absent.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from leak_scan import Ledger

from .ops_fixtures import A, B, entries, launched, observation, outcome, system

JSON = {"Content-Type": "application/fhir+json"}
VITALS = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult"


@pytest.fixture(scope="module")
def planted(ops: httpx.Client, secret_scan: Ledger) -> dict[str, Any]:
    """B's Encounter, and an Observation in A's compartment whose encounter is B's."""
    writer = system(ops, secret_scan)
    encounter = ops.post(
        "/fhir/Encounter",
        json={
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{B}"},
            "participant": [{"individual": {"reference": "Practitioner/practitioner-2"}}],
        },
        headers={**writer, **JSON},
    ).json()
    crossing = ops.post(
        "/fhir/Observation",
        json=observation(A, code="2339-0", encounter={"reference": f"Encounter/{encounter['id']}"}),
        headers={**writer, **JSON},
    ).json()
    b_obs = ops.post("/fhir/Observation", json=observation(B), headers={**writer, **JSON}).json()
    return {"encounter": encounter["id"], "crossing": crossing["id"], "b_observation": b_obs["id"]}


def _get(http: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = http.get(f"/fhir/{path}", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _subjects(resources: list[dict[str, Any]]) -> set[str]:
    return {r["subject"]["reference"] for r in resources if "subject" in r}


def test_include_of_another_patients_resource_is_not_returned(
    ops: httpx.Client, secret_scan: Ledger, planted: dict[str, Any]
) -> None:
    mine = launched(ops, secret_scan, "launch/patient patient/*.rs")
    page = _get(ops, "Observation", mine, _id=planted["crossing"], _include="Observation:encounter")
    assert [r["id"] for r in entries(page, "match")] == [planted["crossing"]]
    assert entries(page, "include") == []
    writer = system(ops, secret_scan, "system/*.rs")
    full = _get(
        ops, "Observation", writer, _id=planted["crossing"], _include="Observation:encounter"
    )
    assert [r["id"] for r in entries(full, "include")] == [planted["encounter"]]


def test_include_iterate_stops_at_what_the_scopes_cover(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    mine = launched(ops, secret_scan, "launch/patient patient/*.rs")
    page = _get(
        ops,
        "Observation",
        mine,
        patient=A,
        _count=3,
        _include="Observation:encounter",
        **{"_include:iterate": "Encounter:practitioner"},
    )
    kinds = {r["resourceType"] for r in entries(page, "include")}
    assert kinds == {"Encounter"}  # Practitioners are outside a patient/ token
    user = launched(ops, secret_scan, "openid fhirUser user/*.rs", patient=None)
    page = _get(
        ops,
        "Observation",
        user,
        patient=A,
        _count=3,
        _include="Observation:encounter",
        **{"_include:iterate": "Encounter:practitioner"},
    )
    assert {r["resourceType"] for r in entries(page, "include")} == {"Encounter", "Practitioner"}
    assert len(entries(page, "match")) == 3


def test_revinclude_keeps_to_the_scopes_restriction(ops: httpx.Client, secret_scan: Ledger) -> None:
    labs_only = launched(
        ops,
        secret_scan,
        "openid user/Patient.rs user/Observation.rs?category=laboratory",
        patient=None,
    )
    page = _get(ops, "Patient", labs_only, _id=A, _revinclude="Observation:patient")
    included = entries(page, "include")
    assert included, "patient A has glucose results"
    categories = {c["code"] for r in included for cat in r["category"] for c in cat["coding"]}
    assert categories == {"laboratory"}
    mine = launched(ops, secret_scan, "launch/patient patient/*.rs")
    page = _get(ops, "Patient", mine, _revinclude="Observation:patient")
    assert _subjects(entries(page, "include")) == {f"Patient/{A}"}


def test_circular_iterate_is_bounded(ops: httpx.Client, secret_scan: Ledger) -> None:
    user = launched(ops, secret_scan, "openid user/*.rs", patient=None)
    page = _get(
        ops,
        "Encounter",
        user,
        patient=A,
        _count=2,
        **{
            "_revinclude:iterate": "Observation:encounter",
            "_include:iterate": "Observation:encounter",
        },
    )
    included = entries(page, "include")
    assert included and len(included) <= 2000
    assert {r["resourceType"] for r in included} == {"Observation"}
    assert len({r["id"] for r in included}) == len(included)


def test_unknown_include_target_is_400(ops: httpx.Client, secret_scan: Ledger) -> None:
    user = launched(ops, secret_scan, "openid user/*.rs", patient=None)
    for value in (
        "Observation:performer",
        "Specimen:patient",
        "Observation:encounter:Patient",
        "nonsense",
    ):
        response = ops.get("/fhir/Observation", headers=user, params={"_include": value})
        assert response.status_code == 400, value
        assert "Observation:encounter" in outcome(response) or "refers to" in outcome(response)


def test_everything_is_the_tokens_patient_only(
    ops: httpx.Client, secret_scan: Ledger, planted: dict[str, Any]
) -> None:
    mine = launched(ops, secret_scan, "launch/patient patient/*.rs")
    page = _get(ops, f"Patient/{A}/$everything", mine, _count=1000)
    resources = entries(page)
    while next_links := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        page = ops.get(next_links[0], headers=mine).json()
        resources.extend(entries(page))
    kinds = {r["resourceType"] for r in resources}
    assert {"Patient", "Observation", "Encounter"} <= kinds
    assert {r["id"] for r in resources if r["resourceType"] == "Patient"} == {A}
    assert _subjects(resources) == {f"Patient/{A}"}
    assert planted["encounter"] not in {r["id"] for r in resources}
    assert planted["crossing"] in {r["id"] for r in resources}
    assert ops.get(f"/fhir/Patient/{B}/$everything", headers=mine).status_code == 404
    paged = _get(ops, f"Patient/{A}/$everything", mine, _count=10, _type="Observation")
    assert len(entries(paged)) == 10 and {r["resourceType"] for r in entries(paged)} == {
        "Observation"
    }
    recent = _get(ops, f"Patient/{A}/$everything", mine, _since="2026-01-01")
    assert planted["crossing"] in {r["id"] for r in entries(recent)}
    assert all(r["meta"]["lastUpdated"] >= "2026" for r in entries(recent))


def test_everything_keeps_to_restricted_and_type_scopes(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    labs = launched(
        ops,
        secret_scan,
        "launch/patient patient/Patient.rs patient/Observation.rs?category=laboratory",
    )
    resources = entries(_get(ops, f"Patient/{A}/$everything", labs, _count=1000))
    assert {r["resourceType"] for r in resources} == {"Patient", "Observation"}
    codes = {
        c["code"]
        for r in resources
        if r["resourceType"] == "Observation"
        for cat in r["category"]
        for c in cat["coding"]
    }
    assert codes == {"laboratory"}
    bad = ops.get(f"/fhir/Patient/{A}/$everything", headers=labs, params={"_type": "Specimen"})
    assert bad.status_code == 400


def test_chained_and_has_parameters_keep_to_the_scopes(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan, "system/*.rs")
    family_b = _get(ops, f"Patient/{B}", writer)["name"][0]["family"]
    mine = launched(ops, secret_scan, "launch/patient patient/*.rs")
    assert entries(
        _get(ops, "Observation", mine, **{"patient.family": family_b})
    ) == [] or _subjects(
        entries(_get(ops, "Observation", mine, **{"patient.family": family_b}))
    ) == {f"Patient/{A}"}
    full = entries(
        _get(ops, "Observation", writer, **{"subject:Patient.family": family_b, "_count": 5})
    )
    assert full and f"Patient/{B}" in _subjects(full)
    no_patient_scope = launched(ops, secret_scan, "launch/patient patient/Observation.rs")
    refused = ops.get(
        "/fhir/Observation", headers=no_patient_scope, params={"patient.family": family_b}
    )
    assert refused.status_code == 403 and "Patient" in outcome(refused)
    # _has through Observations the token may not search finds nobody
    labs_only = launched(
        ops,
        secret_scan,
        "openid user/Patient.rs user/Observation.rs?category=laboratory",
        patient=None,
    )
    by_vitals = _get(ops, "Patient", labs_only, **{"_has:Observation:patient:code": "8867-4"})
    assert entries(by_vitals) == []
    by_labs = _get(ops, "Patient", labs_only, **{"_has:Observation:patient:code": "2339-0"})
    assert A in {r["id"] for r in entries(by_labs)}
    by_vitals_full = _get(ops, "Patient", writer, **{"_has:Observation:patient:code": "8867-4"})
    assert len(entries(by_vitals_full)) >= 2


def test_last_updated_elements_and_summary(
    ops: httpx.Client, secret_scan: Ledger, planted: dict[str, Any]
) -> None:
    reader = system(ops, secret_scan, "system/*.rs")
    recent = entries(_get(ops, "Observation", reader, _lastUpdated="ge2026-01-01", _count=1000))
    assert planted["crossing"] in {r["id"] for r in recent}
    assert all(r["meta"]["lastUpdated"] >= "2026" for r in recent)
    old = entries(
        _get(ops, "Observation", reader, _lastUpdated="lt2026-01-01", patient=A, _count=5)
    )
    assert old and all(r["meta"]["lastUpdated"] < "2026" for r in old)
    subset = entries(
        _get(ops, "Observation", reader, patient=A, _elements="effectiveDateTime", _count=2)
    )
    assert set(subset[0]) == {"resourceType", "id", "meta", "status", "code", "effectiveDateTime"}
    assert subset[0]["meta"]["tag"][-1]["code"] == "SUBSETTED"
    summary = entries(_get(ops, "Patient", reader, _id=A, _summary="true"))[0]
    assert "generalPractitioner" not in summary and "name" in summary
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"


def test_lastn(ops: httpx.Client, secret_scan: Ledger) -> None:
    mine = launched(ops, secret_scan, "launch/patient patient/*.rs")
    bundle = _get(ops, "Observation/$lastn", mine, patient=A, max=2)
    resources = entries(bundle)
    by_code: dict[str, list[str]] = {}
    for r in resources:
        by_code.setdefault(r["code"]["coding"][0]["code"], []).append(r["effectiveDateTime"])
    assert by_code and all(1 <= len(v) <= 2 for v in by_code.values())
    everything = entries(_get(ops, "Observation", mine, code="8867-4", _sort="-date", _count=2))
    assert sorted(o["id"] for o in everything) == sorted(
        r["id"] for r in resources if r["code"]["coding"][0]["code"] == "8867-4"
    )
    assert _subjects(entries(_get(ops, "Observation/$lastn", mine, max=1))) == {f"Patient/{A}"}
    assert ops.get("/fhir/Observation/$lastn", headers=mine, params={"max": "0"}).status_code == 400


def test_terminology(ops: httpx.Client, secret_scan: Ledger) -> None:
    user = launched(ops, secret_scan, "openid user/*.rs", patient=None)
    looked = _get(ops, "CodeSystem/$lookup", user, system="http://loinc.org", code="8867-4")
    values = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in looked["parameter"]
    }
    assert values["display"] == "Heart rate" and values["name"] == "LOINC"
    unknown = ops.get(
        "/fhir/CodeSystem/$lookup",
        headers=user,
        params={"system": "http://loinc.org", "code": "0000-0"},
    )
    assert unknown.status_code == 404
    other = ops.get(
        "/fhir/CodeSystem/$lookup", headers=user, params={"system": "urn:x", "code": "1"}
    )
    assert other.status_code == 404 and "http://snomed.info/sct" in outcome(other)
    expanded = _get(ops, "ValueSet/$expand", user, url=VITALS, filter="blood")
    assert {c["code"] for c in expanded["expansion"]["contains"]} == {"85354-9", "8480-6", "8462-4"}
    assert (
        ops.get("/fhir/ValueSet/$expand", headers=user, params={"url": "urn:nope"}).status_code
        == 404
    )
    assert ops.get("/fhir/ValueSet/$expand", params={"url": VITALS}).status_code == 401
