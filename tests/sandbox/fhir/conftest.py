"""A sandbox process for the FHIR server's integration tests, and tokens for it.

Every token a test obtains is remembered in ``seen_secrets``; the last test of
the package greps the sandbox log for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sandbox_process import SandboxProcess, run_sandbox

from .tokens import BACKEND_SECRET, CLIENTS, backend_token, patient_token

PATIENTS = 6
SEED = 11


@pytest.fixture(scope="package")
def seen_secrets() -> list[str]:
    return [BACKEND_SECRET]


@pytest.fixture(scope="package")
def fhir_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with run_sandbox(
        tmp_path_factory.mktemp("sandbox-fhir"), CLIENTS, patients=PATIENTS, seed=SEED
    ) as process:
        yield process


@pytest.fixture(scope="package")
def http(fhir_sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_sandbox.origin, timeout=60, follow_redirects=False) as client:
        yield client


@pytest.fixture(scope="package")
def system_token(http: httpx.Client, seen_secrets: list[str]) -> dict[str, Any]:
    token = backend_token(http)
    seen_secrets.append(token["access_token"])
    return token


@pytest.fixture(scope="package")
def patient2_token(
    http: httpx.Client, fhir_sandbox: SandboxProcess, seen_secrets: list[str]
) -> dict[str, Any]:
    """``patient/*.rs`` for patient-00002 (standalone launch with login_hint)."""
    token = patient_token(
        http, fhir_sandbox.iss, "launch/patient patient/*.rs", patient="patient-00002"
    )
    assert token["patient"] == "patient-00002"
    seen_secrets.append(token["access_token"])
    return token
