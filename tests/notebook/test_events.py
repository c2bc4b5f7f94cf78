"""Which patient a data-access event names (the audit trail's "whose data")."""

from __future__ import annotations

import pytest

from jupyterhub_smart.notebook.client import event_patient


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
