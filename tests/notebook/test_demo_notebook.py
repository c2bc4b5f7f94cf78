"""The demo notebook runs top to bottom with nbclient against the real sandbox.

(Running it in a server spawned by the real hub comes with the hub's end-to-end tests.)
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from sandbox_process import SandboxProcess

from jupyterhub_smart.demo import DEMO_NOTEBOOKS

from .sandbox_tokens import patient_login

NOTEBOOK = DEMO_NOTEBOOKS / "patient-vitals.ipynb"
PATIENT = "patient-00002"


@pytest.mark.slow
def test_patient_vitals_notebook_runs(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tokens = patient_login(sandbox, patient=PATIENT)
    monkeypatch.setenv("SMART_DEMO_FHIR_BASE", sandbox.iss)
    monkeypatch.setenv("SMART_DEMO_TOKEN", tokens["access_token"])
    monkeypatch.setenv("SMART_DEMO_PATIENT", PATIENT)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "smart-patient-banner" in html and f"Patient/{PATIENT}" in html
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"
    summary = nb.cells[-1]["outputs"][0]["data"]["text/plain"]
    assert "'heart rate readings': 0" not in summary and "'weight readings': 0" not in summary
    text = nbformat.writes(nb)
    assert tokens["access_token"] not in text  # the saved notebook holds no token
