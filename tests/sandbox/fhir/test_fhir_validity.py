"""What the sandbox serves is valid FHIR, checked by an independent model (fhir.resources, R4B).

R4B (4.3) is structurally the same as R4 for every resource the sandbox serves.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from jupyterhub_smart.sandbox.fhir import synthetic
from jupyterhub_smart.sandbox.fhir.capability import capability_statement
from jupyterhub_smart.sandbox.settings import SandboxSettings

from .helpers import fhir_get


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_every_generated_resource_is_valid() -> None:
    types = set()
    for row in synthetic.generate(4, 8, dense_patient_observations=20):
        resource = orjson.loads(row.json)
        validate(resource)
        types.add(resource["resourceType"])
    assert types == {
        "Practitioner",
        "Patient",
        "Condition",
        "MedicationRequest",
        "Encounter",
        "Observation",
    }


def test_capability_statement_is_valid() -> None:
    validate(capability_statement(SandboxSettings()))


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("Observation", {"patient": "patient-00001", "_count": "50"}),
        ("Observation", {"_summary": "count"}),
        ("Observation", {"nope": "1"}),
        ("Patient/patient-99999", None),
    ],
)
def test_served_bundles_and_outcomes_are_valid(
    http: httpx.Client, system_token: dict[str, Any], path: str, params: Any
) -> None:
    response = fhir_get(http, path, system_token, params)
    validate(response.json())
