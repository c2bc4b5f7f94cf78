"""Unit tests of the FHIR server's authorization rules (access.authorize and Access.clauses).

The sandbox's authorization server always puts a patient into tokens with
patient/ scopes, so tokens it cannot issue (patient/ scopes without a patient,
several overlapping scopes) are built here as AccessGrants, the contract
between the two halves, and the SQL is run against a real generated store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyterhub_smart.sandbox.access_grant import AccessGrant
from jupyterhub_smart.sandbox.fhir import FHIRStore
from jupyterhub_smart.sandbox.fhir.access import authorize
from jupyterhub_smart.sandbox.fhir.outcome import FHIRError
from jupyterhub_smart.sandbox.fhir.search import parse_search

BASE = "http://127.0.0.1:8700/fhir"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FHIRStore]:
    store = FHIRStore(Path(tmp_path_factory.mktemp("access")) / "fhir.sqlite")
    store.ensure_generated(patients=3, seed=4)
    yield store
    store.close()


def grant(*scopes: str, patient: str | None = None, expires_in: float = 300) -> AccessGrant:
    return AccessGrant("unit", scopes, patient, None, None, time.time() + expires_in)


def visible(
    store: FHIRStore, g: AccessGrant, resource_type: str = "Observation"
) -> list[tuple[str, str]]:
    """(patient, category) of every visible resource."""
    access = authorize("Bearer t", lambda _: g, resource_type, "s", BASE)
    sql, args = parse_search(resource_type, [("_count", "1000")], BASE).page_sql(access.clauses())
    seqs = [row[0] for row in store.query(sql, args)]
    if not seqs:
        return []
    marks = ",".join("?" * len(seqs))
    rows = store.query(
        f"SELECT r.patient, t.value FROM resources r JOIN tokens t ON t.seq = r.seq AND t.param = 'category' "  # noqa: S608
        f"WHERE r.seq IN ({marks})",
        seqs,
    )
    return sorted(set(rows))


def test_patient_scope_without_patient_is_403() -> None:
    with pytest.raises(FHIRError, match="need a patient in the launch context") as info:
        authorize("Bearer t", lambda _: grant("patient/Observation.rs"), "Observation", "s", BASE)
    assert info.value.status == 403


def test_expired_grant_is_401_even_if_the_lookup_returns_it() -> None:
    with pytest.raises(FHIRError) as info:
        authorize("Bearer t", lambda _: grant("system/*.rs", expires_in=-1), "Patient", "r", BASE)
    assert info.value.status == 401
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]


def test_scopes_are_ored(store: FHIRStore) -> None:
    only_vitals = visible(
        store, grant("patient/Observation.rs?category=vital-signs", patient="patient-00001")
    )
    assert only_vitals == [("patient-00001", "vital-signs")]
    both = visible(
        store,
        grant(
            "patient/Observation.rs?category=vital-signs",
            "patient/Observation.rs?category=laboratory",
            patient="patient-00001",
        ),
    )
    assert both == [("patient-00001", "laboratory"), ("patient-00001", "vital-signs")]
    wider = visible(
        store,
        grant(
            "patient/Observation.rs",
            "user/Observation.rs?category=laboratory",
            patient="patient-00001",
        ),
    )
    assert ("patient-00001", "vital-signs") in wider
    assert ("patient-00002", "laboratory") in wider
    assert ("patient-00002", "vital-signs") not in wider


def test_unenforceable_restriction_grants_nothing(store: FHIRStore) -> None:
    assert visible(store, grant("user/Observation.rs?status=final")) == []
    assert visible(store, grant("user/*.rs?category=vital-signs"), "Patient") == []


def test_v1_and_wildcards(store: FHIRStore) -> None:
    everything = visible(store, grant("user/*.read"))
    assert {p for p, _ in everything} == {"patient-00001", "patient-00002", "patient-00003"}
    with pytest.raises(FHIRError) as info:
        authorize("Bearer t", lambda _: grant("user/*.read"), "AuditEvent", "c", BASE)
    assert info.value.status == 403
    assert "user/AuditEvent.c" in info.value.diagnostics
