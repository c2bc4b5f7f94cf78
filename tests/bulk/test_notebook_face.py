"""``fhir.bulk_export(...)``: a notebook exports with the user's own SMART token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sandbox.fhir.tokens import PUBLIC, patient_token

from jupyterhub_smart.notebook.client import SMARTClient
from jupyterhub_smart.notebook.tokens import StaticTokenProvider

from .conftest import bulk_sandbox


def test_notebook_bulk_export_is_limited_to_the_users_patient(keys: Any, tmp_path: Path) -> None:
    with bulk_sandbox(tmp_path / "sbx", keys, other_clients=[PUBLIC]) as env:
        with httpx.Client(base_url=env.sandbox.origin, timeout=30) as http:
            granted = patient_token(
                http, env.fhir_url, "launch/patient patient/*.rs", "patient-00003"
            )
        assert granted["patient"] == "patient-00003"
        token = str(granted["access_token"])
        provider = StaticTokenProvider(token, env.fhir_url)
        with SMARTClient(provider, allow_http=True) as fhir:
            result = fhir.bulk_export(
                str(tmp_path / "out"),
                patient_level=True,
                types="Patient,Observation",
                lock_dir=env.lock_dir,
            )
        assert result.exit_code == 0
        assert result.table("Patient")["resource_id"].to_pylist() == ["patient-00003"]
        subjects = {
            row["subject"] for row in result.table("Observation").select(["subject"]).to_pylist()
        }
        assert subjects == {"Patient/patient-00003"}
