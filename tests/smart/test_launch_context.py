"""Launch context validation and fhirUser references."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jupyterhub_smart.smart.errors import LaunchContextError
from jupyterhub_smart.smart.launch_context import LaunchContext, fhir_user_reference, is_fhir_id


def test_full_context() -> None:
    raw = {
        "access_token": "secret",
        "patient": "p-123.A",
        "encounter": "e1",
        "fhirContext": [
            {"reference": "Encounter/e2", "role": "previous"},
            {"canonical": "http://example.org/Questionnaire/q|1.0", "type": "Questionnaire"},
            {"identifier": {"system": "urn:x", "value": "1"}, "type": "DocumentReference"},
        ],
        "need_patient_banner": False,
        "smart_style_url": "https://ehr.example.org/style.json",
        "intent": "reconcile-medications",
        "tenant": "hospital-a",
    }
    ctx = LaunchContext.from_token_response(raw)
    assert ctx.patient == "p-123.A" and ctx.encounter == "e1"
    assert len(ctx.fhir_context) == 3
    assert ctx.need_patient_banner is False
    out = ctx.to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["fhirContext"][0] == {"reference": "Encounter/e2", "role": "previous"}
    assert "access_token" not in out


def test_empty_context_and_banner_default() -> None:
    ctx = LaunchContext.from_token_response({})
    assert ctx == LaunchContext(None, None, (), False, None, None, None)
    assert LaunchContext.from_token_response({"patient": "p1"}).need_patient_banner is True


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"patient": "../Patient/x"}, "'patient' that is not a FHIR id"),
        ({"patient": "a" * 65}, "not a FHIR id"),
        ({"patient": ""}, "not a FHIR id"),
        ({"patient": 123}, "not a FHIR id"),
        ({"patient": "p 1"}, "not a FHIR id"),
        ({"patient": "p1?_format=xml"}, "not a FHIR id"),
        ({"patient": ".."}, "not a FHIR id"),
        ({"patient": "."}, "not a FHIR id"),
        ({"encounter": "e/1"}, "'encounter' that is not a FHIR id"),
        ({"fhirContext": {"reference": "x"}}, "not a list"),
        ({"fhirContext": ["Encounter/1"]}, "fhirContext[0] that is not an object"),
        ({"fhirContext": [{"role": "launch"}]}, "without reference, canonical or identifier"),
        ({"fhirContext": [{"reference": 5}]}, "fhirContext[0].reference"),
        ({"fhirContext": [{"reference": "x", "type": "encounter"}]}, "not a resource type"),
        ({"fhirContext": [{"identifier": "123"}]}, "identifier that is not an object"),
        ({"fhirContext": [{"reference": "x"}] * 101}, "not a list"),
        ({"need_patient_banner": "true"}, "need_patient_banner"),
        ({"smart_style_url": "javascript:alert(1)"}, "smart_style_url"),
        ({"smart_style_url": 5}, "smart_style_url"),
        ({"intent": ["x"]}, "'intent'"),
        ({"tenant": "x" * 5000}, "'tenant'"),
    ],
)
def test_malformed_context_refused(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(LaunchContextError) as info:
        LaunchContext.from_token_response(raw)
    assert words in str(info.value)
    assert info.value.status == 502 and info.value.error == "invalid_launch_context"


def test_not_a_mapping() -> None:
    with pytest.raises(LaunchContextError):
        LaunchContext.from_token_response([])  # type: ignore[arg-type]


def test_is_fhir_id() -> None:
    assert is_fhir_id("abc-1.2") and not is_fhir_id("a_b") and not is_fhir_id(None)


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"fhirUser": "Practitioner/123"}, "Practitioner/123"),
        ({"fhirUser": "https://ehr.example.org/fhir/Practitioner/123"}, "Practitioner/123"),
        ({"fhirUser": "https://ehr.example.org/fhir/Patient/p-1/_history/2"}, "Patient/p-1"),
        ({"fhirUser": "RelatedPerson/r.9"}, "RelatedPerson/r.9"),
        ({"profile": "Practitioner/v1"}, "Practitioner/v1"),
        ({"fhirUser": "Practitioner/a", "profile": "Practitioner/b"}, "Practitioner/a"),
        ({}, None),
        ({"fhirUser": ""}, None),
        ({"fhirUser": 5}, None),
        ({"fhirUser": "Practitioner"}, None),
        ({"fhirUser": "practitioner/1"}, None),
        ({"fhirUser": "Practitioner/a b"}, None),
        ({"fhirUser": "Practitioner/../../etc"}, None),
        ({"fhirUser": "https://ehr.example.org/"}, None),
        ({"fhirUser": "Practitioner/.."}, None),
    ],
)
def test_fhir_user_reference(claims: dict[str, Any], expected: str | None) -> None:
    assert fhir_user_reference(claims) == expected
