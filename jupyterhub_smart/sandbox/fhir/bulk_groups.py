"""Synthetic ``Group`` resources (cohorts) for Group-level ``$export``.

They are derived from the store on each request, not stored: a cohort is the
set of patients with a Condition code (or every patient), so it is always
consistent with the data and needs no schema of its own.
"""

from __future__ import annotations

from typing import Any

from .store import FHIRStore
from .synthetic import LAST_UPDATED, SNOMED

#: Group id -> (name, SNOMED code of the defining Condition, or None for everyone).
COHORTS: dict[str, tuple[str, str | None]] = {
    "all-patients": ("Every patient", None),
    "diabetes": ("Patients with diabetes mellitus type 2", "44054006"),
    "hypertension": ("Patients with systemic arterial hypertension", "38341003"),
}


def members(store: FHIRStore, group_id: str) -> list[str] | None:
    """Patient ids of a cohort, in store order; ``None`` for an unknown group."""
    if group_id not in COHORTS:
        return None
    code = COHORTS[group_id][1]
    if code is None:
        rows = store.query("SELECT id FROM resources WHERE type = 'Patient' ORDER BY seq", ())
    else:
        rows = store.query(
            "SELECT DISTINCT r.patient FROM resources r JOIN tokens t ON t.seq = r.seq "
            "WHERE r.type = 'Condition' AND t.param = 'code' AND t.system = ? AND t.value = ? "
            "ORDER BY r.patient",
            (SNOMED, code),
        )
    return [row[0] for row in rows]


def group_resource(store: FHIRStore, group_id: str) -> dict[str, Any] | None:
    """The Group resource of a cohort, or ``None`` if there is no such group."""
    ids = members(store, group_id)
    if ids is None:
        return None
    return {
        "resourceType": "Group",
        "id": group_id,
        "meta": {"versionId": "1", "lastUpdated": LAST_UPDATED},
        "type": "person",
        "actual": True,
        "name": COHORTS[group_id][0],
        "quantity": len(ids),
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in ids],
    }
