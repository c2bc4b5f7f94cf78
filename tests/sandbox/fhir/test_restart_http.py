"""The sandbox's FHIR data survives a restart, and changes of parameters rebuild it."""

from __future__ import annotations

from pathlib import Path

import httpx
from sandbox_process import run_sandbox

from .helpers import audit_event, fhir_get
from .tokens import CLIENTS, backend_token


def test_data_survives_a_restart_and_is_rebuilt_for_other_parameters(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    used: list[str] = []
    with (
        run_sandbox(tmp_path / "first", CLIENTS, patients=3, seed=5, data_dir=data_dir) as first,
        httpx.Client(base_url=first.origin, timeout=60) as client,
    ):
        token = backend_token(client, "system/*.rs system/AuditEvent.c")
        used.append(token["access_token"])
        before = fhir_get(client, "Patient/patient-00002", token).json()
        created = client.post(
            "/fhir/AuditEvent",
            json=audit_event(),
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )
        assert created.status_code == 201
        event_id = created.json()["id"]
    with (
        run_sandbox(tmp_path / "second", CLIENTS, patients=3, seed=5, data_dir=data_dir) as second,
        httpx.Client(base_url=second.origin, timeout=60) as client,
    ):
        assert "reusing" in second.log_text()
        token = backend_token(client)
        used.append(token["access_token"])
        assert fhir_get(client, "Patient/patient-00002", token).json() == before
        assert fhir_get(client, f"AuditEvent/{event_id}", token).status_code == 200
    with (
        run_sandbox(tmp_path / "third", CLIENTS, patients=3, seed=6, data_dir=data_dir) as third,
        httpx.Client(base_url=third.origin, timeout=60) as client,
    ):
        assert "regenerating" in third.log_text()
        token = backend_token(client)
        used.append(token["access_token"])
        assert fhir_get(client, "Patient/patient-00002", token).json() != before
        assert fhir_get(client, f"AuditEvent/{event_id}", token).status_code == 404
    for process in (first, second, third):
        log = process.log_text()
        assert not [secret for secret in used if secret in log]
