"""A sandbox process for the FHIR server's integration tests, and tokens for it.

Every token a test obtains goes to the session's ``secret_scan``, which reads the
sandbox log for all of them when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from leak_scan import Ledger
from sandbox_process import SandboxProcess, run_sandbox

from .tokens import BACKEND_SECRET, CLIENTS, backend_token, patient_token

PATIENTS = 6
SEED = 11


@pytest.fixture(scope="package")
def fhir_sandbox(
    tmp_path_factory: pytest.TempPathFactory, secret_scan: Ledger
) -> Iterator[SandboxProcess]:
    secret_scan.add(BACKEND_SECRET, kind="client secret")
    with run_sandbox(
        tmp_path_factory.mktemp("sandbox-fhir"), CLIENTS, patients=PATIENTS, seed=SEED
    ) as process:
        yield process


@pytest.fixture(scope="package")
def http(fhir_sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_sandbox.origin, timeout=60, follow_redirects=False) as client:
        yield client


@pytest.fixture(scope="package")
def system_token(http: httpx.Client, secret_scan: Ledger) -> dict[str, Any]:
    token = backend_token(http)
    secret_scan.add(token["access_token"])
    return token


@pytest.fixture(scope="package")
def patient2_token(
    http: httpx.Client, fhir_sandbox: SandboxProcess, secret_scan: Ledger
) -> dict[str, Any]:
    """``patient/*.rs`` for patient-00002 (standalone launch with login_hint)."""
    token = patient_token(
        http, fhir_sandbox.iss, "launch/patient patient/*.rs", patient="patient-00002"
    )
    assert token["patient"] == "patient-00002"
    secret_scan.add(token["access_token"])
    return token


# A writable sandbox per module for the write, history and operation tests.
from .ops_fixtures import ops  # noqa: E402, F401
