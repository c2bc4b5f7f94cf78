"""Unit tests of the synthetic data: deterministic, realistic enough, and coded right."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime

import orjson

from jupyterhub_smart.sandbox.fhir import synthetic


def digest(patients: int, seed: int, dense: int = 0) -> str:
    h = hashlib.sha256()
    for row in synthetic.generate(patients, seed, dense):
        h.update(row.json)
        h.update(repr((row.patient, row.date_start, row.date_end, row.tokens)).encode())
    return h.hexdigest()


def test_same_seed_same_bytes() -> None:
    assert digest(4, 42, 50) == digest(4, 42, 50)


def test_other_seed_other_data() -> None:
    assert digest(4, 42) != digest(4, 43)


def test_a_patient_does_not_depend_on_how_many_are_generated() -> None:
    few = [r.json for r in synthetic.generate(2, 9) if r.patient == "patient-00002"]
    many = [r.json for r in synthetic.generate(5, 9) if r.patient == "patient-00002"]
    assert few == many and few


def test_contents() -> None:
    rows = list(synthetic.generate(20, 1, dense_patient_observations=30))
    types = Counter(r.resource_type for r in rows)
    assert types["Patient"] == 21 and types["Practitioner"] >= 3
    assert types["Encounter"] > 20 and types["Condition"] > 0 and types["MedicationRequest"] > 0
    resources = [orjson.loads(r.json) for r in rows]
    assert len({(r["resourceType"], r["id"]) for r in resources}) == len(resources)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    codes = Counter(o["code"]["coding"][0]["code"] for o in observations)
    assert set(codes) == {"8867-4", "85354-9", "29463-7", "39156-5", "2339-0"}
    panels = [o for o in observations if o["code"]["coding"][0]["code"] == "85354-9"]
    assert panels and all(
        [c["code"]["coding"][0]["code"] for c in p["component"]] == ["8480-6", "8462-4"]
        and all(c["valueQuantity"]["code"] == "mm[Hg]" for c in p["component"])
        for p in panels
    ), "a blood pressure panel has a systolic and a diastolic component"
    assert {c["system"] for o in observations for c in o["code"]["coding"]} == {"http://loinc.org"}
    categories = {o["category"][0]["coding"][0]["code"] for o in observations}
    assert categories == {"vital-signs", "laboratory"}
    for o in observations:
        when = datetime.fromisoformat(o["effectiveDateTime"])
        assert when.tzinfo is not None
        quantity = o.get("valueQuantity") or o["component"][0]["valueQuantity"]
        assert quantity["system"] == "http://unitsofmeasure.org" and quantity["code"]
    years = {
        o["effectiveDateTime"][:4]
        for o in observations
        if o["subject"]["reference"] == "Patient/patient-00001"
    }
    assert len(years) >= 2, "vital signs should form a series over years"
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    assert {c["code"]["coding"][0]["system"] for c in conditions} == {"http://snomed.info/sct"}
    meds = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    assert {m["medicationCodeableConcept"]["coding"][0]["system"] for m in meds} == {
        "http://www.nlm.nih.gov/research/umls/rxnorm"
    }
    dense = [o for o in observations if o["subject"]["reference"] == "Patient/dense"]
    assert len(dense) == 30
    patient = resources[[r["resourceType"] for r in resources].index("Patient")]
    assert patient["id"] == "patient-00001"
    assert patient["identifier"][0]["type"]["coding"][0]["code"] == "MR"


def test_index_dates_match_the_resources() -> None:
    for row in synthetic.generate(2, 3):
        resource = orjson.loads(row.json)
        if row.resource_type == "Observation":
            assert row.date_start == int(
                datetime.fromisoformat(resource["effectiveDateTime"]).timestamp()
            )
        elif row.resource_type == "Encounter":
            assert row.date_start == int(
                datetime.fromisoformat(resource["period"]["start"]).timestamp()
            )


def test_string_index_is_case_and_accent_insensitive() -> None:
    assert synthetic.normalise_text("Zoë Müller") == "zoe muller"
