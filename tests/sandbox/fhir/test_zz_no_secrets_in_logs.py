"""Runs last in this package: no token or secret used by its tests reached the sandbox log."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sandbox_process import SandboxProcess

from .helpers import fhir_get


def test_no_secret_in_the_sandbox_log(
    fhir_sandbox: SandboxProcess,
    http: httpx.Client,
    system_token: dict[str, Any],
    seen_secrets: list[str],
) -> None:
    # A last request, refused for a bad parameter, so the log has access and error lines.
    assert fhir_get(http, "Observation", system_token, {"nope": "1"}).status_code == 400
    deadline = time.monotonic() + 30
    while "GET /fhir/Observation 400" not in fhir_sandbox.log_text():
        assert time.monotonic() < deadline, "the sandbox log is not being captured"
        time.sleep(0.05)
    log = fhir_sandbox.log_text()
    # The access log names the client of each FHIR request (and nothing secret).
    assert "GET /fhir/Observation 400 client_id=fhir-backend" in log
    assert len(seen_secrets) >= 2
    for secret in seen_secrets:
        assert secret not in log
