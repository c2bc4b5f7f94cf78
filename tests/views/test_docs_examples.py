"""The views page's examples are valid views that give what the page says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from jupyterhub_smart import views

PAGE = Path(__file__).resolve().parents[2] / "docs" / "views.md"


def examples() -> dict[str, dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", PAGE.read_text(), re.DOTALL)
    found = [orjson.loads(block) for block in blocks]
    return {view["name"]: view for view in found if view.get("resourceType") == "ViewDefinition"}


def test_the_page_has_its_three_example_views():
    assert set(examples()) == {"patient_demographics", "patient_addresses", "blood_pressure"}


@pytest.mark.parametrize("name", sorted(examples()))
def test_every_example_is_a_valid_view(name):
    views.compile_view(examples()[name])


def test_addresses_example():
    patients = [
        {"resourceType": "Patient", "id": "a", "address": [{"use": "home", "line": ["1 Main St", "Apt 2"], "city": "Oslo"}, {"city": "Bergen"}]},
        {"resourceType": "Patient", "id": "b"},
    ]  # fmt: skip
    rows = views.run(examples()["patient_addresses"], patients).to_pylist()
    assert rows == [
        {"patient_id": "a", "address_index": 0, "use": "home", "lines": "1 Main St, Apt 2", "city": "Oslo", "postal_code": None},
        {"patient_id": "a", "address_index": 1, "use": None, "lines": "", "city": "Bergen", "postal_code": None},
        {"patient_id": "b", "address_index": 0, "use": None, "lines": None, "city": None, "postal_code": None},
    ]  # fmt: skip


def test_blood_pressure_example():
    def component(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg"},
        }

    bp = {
        "resourceType": "Observation",
        "id": "bp1",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T10:00:00Z",
        "component": [component("8462-4", 80), component("8480-6", 120)],
    }
    heart_rate = {
        "resourceType": "Observation",
        "id": "hr",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    }
    rows = views.run(examples()["blood_pressure"], [bp, heart_rate]).to_pylist()
    assert rows == [
        {"id": "bp1", "patient_id": "p1", "effective": "2024-01-02T10:00:00Z", "systolic": 120.0, "diastolic": 80.0, "unit": "mmHg"}
    ]  # fmt: skip
