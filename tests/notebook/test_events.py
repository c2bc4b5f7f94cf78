"""Which patient a data-access event names (the audit trail's "whose data")."""

from __future__ import annotations

import pytest

from jupyterhub_smart.notebook.events import event_patient, request_event


@pytest.mark.parametrize(
    ("resource_type", "resource_id", "params", "expected"),
    [
        ("Patient", "p2", [], "p2"),  # a read of another patient is about that patient
        ("Observation", None, [("patient", "p2"), ("code", "8867-4")], "p2"),
        ("Observation", None, [("subject", "Patient/p2")], "p2"),
        ("Patient", None, [("_id", "p2")], "p2"),
        ("Observation", None, [("code", "8867-4")], "launched"),  # the launch context
        ("Observation", None, [("patient", "p2,p3")], None),  # several: no single one
        ("Observation", None, [("patient", "p2"), ("subject", "p3")], None),
        ("Observation", None, [("subject", "Group/g1")], None),  # not a patient id
        ("Observation", None, [("_id", "o1")], "launched"),  # _id of another type
    ],
)
def test_event_patient(
    resource_type: str,
    resource_id: str | None,
    params: list[tuple[str, str]],
    expected: str | None,
) -> None:
    assert event_patient("launched", resource_type, resource_id, params) == expected


BASE = "https://ehr.test/r4/fhir"
BUNDLE = b'{"resourceType":"Bundle","entry":[{"resource":{}},{"resource":{}}]}'


@pytest.mark.parametrize(
    ("path", "action", "resource_type", "resource_id", "patient", "count"),
    [
        ("/Observation?patient=p2&code=1", "search", "Observation", None, "p2", 2),
        ("/Observation/_search", "search", "Observation", None, "launched", 2),
        ("/Patient/p3", "read", "Patient", "p3", "p3", 1),
        ("/Observation/o1/_history/2", "vread", "Observation", "o1", "launched", 1),
        ("/Patient/p4/Observation?code=1", "search", "Observation", None, "p4", 2),
        ("/Patient/p5/$everything", "operation", "Patient", "p5", "p5", 2),
    ],
)
def test_request_event_reads_the_shape_from_the_url(
    path: str,
    action: str,
    resource_type: str,
    resource_id: str | None,
    patient: str | None,
    count: int,
) -> None:
    body = BUNDLE if action in ("search", "operation") else b'{"resourceType":"Observation"}'
    event = request_event(BASE + path, BASE, 200, launched="launched", body=body)
    assert event is not None
    assert (event.action, event.resource_type, event.resource_id) == (
        action,
        resource_type,
        resource_id,
    )
    assert (event.patient, event.count, event.status) == (patient, count, 200)


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}/metadata",
        f"{BASE}/",
        f"{BASE}/Patient/p1/_history",
        "https://ehr.test/other/Patient/p1",  # not under the base
        f"{BASE}/Patient/../../admin",
    ],
)
def test_request_event_ignores_what_is_not_a_resource_request(url: str) -> None:
    assert request_event(url, BASE, 200, launched=None, body=BUNDLE) is None


def test_request_event_of_an_error_or_odd_body_counts_nothing() -> None:
    refused = request_event(f"{BASE}/Patient/p1", BASE, 403, launched=None, body=b"{}")
    assert refused is not None and refused.count == 0 and refused.status == 403
    odd = request_event(f"{BASE}/Observation", BASE, 200, launched=None, body=b"not json")
    assert odd is not None and odd.count == 0
