"""Unit tests of FHIRStore over a real SQLite file."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from jupyterhub_smart.sandbox.fhir import FHIRStore
from jupyterhub_smart.sandbox.fhir.store import build_database


def test_generate_read_list(tmp_path: Path) -> None:
    store = FHIRStore(tmp_path / "fhir.sqlite")
    store.ensure_generated(patients=3, seed=1, dense_patient_observations=10)
    patients = store.list_patients()
    # Generation order: the benchmark patient "dense" comes last, never "first".
    assert [p["id"] for p in patients] == [
        "patient-00001",
        "patient-00002",
        "patient-00003",
        "dense",
    ]
    assert [p["id"] for p in store.list_patients(limit=1, offset=1)] == ["patient-00002"]
    practitioners = store.list_practitioners()
    assert len(practitioners) >= 3 and practitioners[0]["id"] == "practitioner-1"
    assert store.read("Patient", "patient-00002")["id"] == "patient-00002"  # type: ignore[index]
    assert store.read("Patient", "nope") is None
    assert store.list_patients(limit=10**30, offset=10**30) == []
    assert len(store.list_patients(limit=-5, offset=-5)) == 0
    assert len(store.list_patients(limit=10**30)) == 4
    assert store.read("Observation", "patient-00002") is None
    assert store.counts()["Observation"] > 10
    store.close()


def test_reuse_and_regenerate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "fhir.sqlite"
    store = FHIRStore(path)
    store.ensure_generated(patients=2, seed=1)
    event_id, _ = store.create({"resourceType": "AuditEvent"}, patient=None)
    store.close()
    again = FHIRStore(path)
    again.ensure_generated(patients=2, seed=1)
    assert "reusing" in caplog.text
    assert again.read("AuditEvent", event_id) is not None
    again.ensure_generated(patients=2, seed=2)
    assert "regenerating" in caplog.text
    assert again.read("AuditEvent", event_id) is None
    assert again.generation_parameters()["seed"] == "2"  # type: ignore[index]
    again.close()


def test_a_failed_build_leaves_the_old_database(tmp_path: Path) -> None:
    path = tmp_path / "fhir.sqlite"
    store = FHIRStore(path)
    store.ensure_generated(patients=1, seed=1)
    before = store.read("Patient", "patient-00001")
    store.close()

    def broken():  # type: ignore[no-untyped-def]
        from jupyterhub_smart.sandbox.fhir import synthetic

        yield from synthetic.generate(1, 99)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_database(path, broken(), {"seed": "99"})
    assert not list(tmp_path.glob("*.building"))
    assert FHIRStore(path).read("Patient", "patient-00001") == before


def test_corrupt_database_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "fhir.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = FHIRStore(path)
    store.ensure_generated(patients=1, seed=1)
    assert store.read("Patient", "patient-00001") is not None
    store.close()


def test_concurrent_readers_and_a_writer(tmp_path: Path) -> None:
    store = FHIRStore(tmp_path / "fhir.sqlite")
    store.ensure_generated(patients=2, seed=1)
    errors: list[BaseException] = []
    created: list[str] = []

    def reader() -> None:
        try:
            for _ in range(200):
                assert store.read("Patient", "patient-00001") is not None
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            for _ in range(50):
                created.append(store.create({"resourceType": "AuditEvent"})[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(6)] + [
        threading.Thread(target=writer)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(store.read("AuditEvent", i) is not None for i in created)
    store.close()
