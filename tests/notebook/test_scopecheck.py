"""Scope awareness: a request the granted scopes cannot cover is refused before it is sent."""

from __future__ import annotations

import httpx
import pytest

from jupyterhub_smart.notebook import (
    NoPatientInContext,
    ScopeNotGranted,
    SMARTClient,
    StaticTokenProvider,
)
from jupyterhub_smart.notebook.scopecheck import check_scopes

from .fakes import FHIR_BASE, json_response, secret

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def client_with(scopes: str, patient: str | None = "p1") -> tuple[SMARTClient, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if "/Patient/" in request.url.path:
            return json_response(200, {"resourceType": "Patient", "id": "p1"})
        return json_response(200, {"resourceType": "Bundle", "type": "searchset"})

    provider = StaticTokenProvider(secret("t"), FHIR_BASE, scopes=scopes, patient=patient)
    return SMARTClient(provider, transport=httpx.MockTransport(handler)), sent


def test_resource_type_not_granted() -> None:
    client, sent = client_with("openid patient/Observation.rs")
    with pytest.raises(ScopeNotGranted) as info:
        client.search("Condition")
    message = str(info.value)
    assert "search of Condition needs one of patient/Condition.rs" in message
    assert "granted patient/Observation.rs" in message
    assert info.value.granted == ["patient/Observation.rs"]
    assert sent == []


def test_interaction_not_granted() -> None:
    client, sent = client_with("patient/Patient.r")
    client.read("Patient", "p1")
    with pytest.raises(ScopeNotGranted, match="search of Patient"):
        client.search("Patient")
    client, sent = client_with("patient/Observation.s")
    client.search("Observation").to_pandas()
    assert len(sent) == 1


def test_v2_category_restriction() -> None:
    client, sent = client_with(f"patient/Observation.rs?category={LAB}")
    with pytest.raises(ScopeNotGranted, match="Restricted scopes") as info:
        client.observations(code="8867-4")
    assert info.value.needed[0] == "patient/Observation.rs"
    assert sent == []
    client.observations(category="laboratory").to_pandas()
    client.search("Observation", category=LAB).to_pandas()
    with pytest.raises(ScopeNotGranted):
        client.search("Observation", category="vital-signs")
    with pytest.raises(ScopeNotGranted):
        client.search("Observation", category="laboratory,vital-signs")
    assert len(sent) == 2


def test_patient_compartment() -> None:
    client, sent = client_with("patient/*.rs")
    client.read("Patient", "p1")
    client.search("Observation", patient="p1").to_pandas()
    client.search("Observation", subject="Patient/p1").to_pandas()
    client.search("Observation").to_pandas()  # the server limits it to p1
    with pytest.raises(ScopeNotGranted, match=r"beyond the launched patient \(p1\)"):
        client.read("Patient", "p2")
    with pytest.raises(ScopeNotGranted, match=r"user/Observation\.rs, system/Observation\.rs"):
        client.search("Observation", patient="p2")
    with pytest.raises(ScopeNotGranted):
        client.search("Observation", patient="p1,p2")
    with pytest.raises(ScopeNotGranted):
        client.observations(patient="p2")
    assert len(sent) == 4


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("p1", True),
        ("Patient/p1", True),
        ("Patient/p1/_history/3", True),
        (f"{FHIR_BASE}/Patient/p1", True),
        ("https://other.example/fhir/Patient/p1", True),  # the server decides on bases
        ("Patient/p2", False),
        (f"{FHIR_BASE}/Patient/p2/_history/1", False),
        ("Group/p1", False),  # not a patient reference: not the launched patient
        ("x/Patient/p1", False),
    ],
)
def test_patient_named_by_reference(value: str, allowed: bool) -> None:
    client, sent = client_with("patient/*.rs")
    if allowed:
        client.search("Observation", subject=value).to_pandas()
        assert len(sent) == 1
    else:
        with pytest.raises(ScopeNotGranted):
            client.search("Observation", subject=value)
        assert sent == []


def test_user_scopes_reach_every_patient() -> None:
    client, sent = client_with("user/*.rs")
    client.read("Patient", "p2")
    client.observations(patient="p2").to_pandas()
    assert len(sent) == 2


def test_no_patient_in_context() -> None:
    client, sent = client_with("patient/*.rs", patient=None)
    with pytest.raises(ScopeNotGranted, match="this session has no patient"):
        client.search("Observation")
    with pytest.raises(NoPatientInContext, match="observations"):
        client.observations(code="8867-4")
    with pytest.raises(NoPatientInContext):
        client.patient  # noqa: B018
    assert sent == []


def test_unknown_scopes_skip_the_check() -> None:
    client, sent = client_with("")
    client.search("Condition").to_pandas()
    assert len(sent) == 1


def test_check_can_be_turned_off() -> None:
    provider = StaticTokenProvider(
        secret("t"), FHIR_BASE, scopes="patient/Patient.rs", patient="p1"
    )
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return json_response(200, {"resourceType": "Bundle", "type": "searchset"})

    client = SMARTClient(provider, transport=httpx.MockTransport(handler), check_scopes=False)
    client.search("Condition").to_pandas()
    assert len(sent) == 1


def test_v1_scopes() -> None:
    check_scopes(["patient/Observation.read"], "Observation", "s", patient="p1")
    with pytest.raises(ScopeNotGranted):
        check_scopes(
            ["patient/Observation.write"], "Observation", "r", resource_id="o1", patient="p1"
        )
