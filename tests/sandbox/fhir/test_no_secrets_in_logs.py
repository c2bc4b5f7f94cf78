"""The sandbox's access log names the client of each FHIR request, and nothing secret.

The secrets of every other test are looked for in every sandbox log by the
session's ``secret_scan`` when the session ends.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from sandbox_process import SandboxProcess

from .helpers import fhir_get
from .tokens import BACKEND_SECRET


def test_no_secret_in_the_sandbox_log(
    fhir_sandbox: SandboxProcess,
    http: httpx.Client,
    system_token: dict[str, Any],
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
    for secret in (system_token["access_token"], BACKEND_SECRET):
        assert secret not in log
