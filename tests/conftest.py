"""Fixtures shared by every test package.

``sandbox`` is one real sandbox EHR process per test session, auto-approving,
with a public, a symmetric and an asymmetric test client registered. Tests that
need other settings start their own with :func:`tests.sandbox_process.run_sandbox`.

``secret_scan`` (autouse, from :mod:`leak_scan`) collects every secret the
session's tests handle and, when the session ends, looks for them in every log,
audit trail and database its hubs and sandboxes wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_scan import secret_scan  # noqa: F401 (an autouse session fixture)
from sandbox_process import SandboxProcess, run_sandbox

# JupyterHub needs configurable-http-proxy, installed locally by `make` under node_modules.
_NODE_BIN = Path(__file__).resolve().parent.parent / "node_modules" / ".bin"
if _NODE_BIN.is_dir() and str(_NODE_BIN) not in os.environ.get("PATH", ""):
    os.environ["PATH"] = f"{_NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

#: Redirect URI registered for the test clients (nothing needs to listen there:
#: tests read the ``Location`` header instead of following it).
TEST_REDIRECT_URI = "http://127.0.0.1:9/callback"

PUBLIC_CLIENT: dict[str, Any] = {
    "client_id": "test-public",
    "type": "public",
    "redirect_uris": [TEST_REDIRECT_URI],
}
SYMMETRIC_CLIENT: dict[str, Any] = {
    "client_id": "test-symmetric",
    "type": "confidential-symmetric",
    "client_secret": "test-symmetric-secret-0123456789",
    "redirect_uris": [TEST_REDIRECT_URI],
    "scope": "system/*.rs",
}


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """One auto-approving sandbox for the whole session (5 patients, seed 7)."""
    workdir = tmp_path_factory.mktemp("sandbox")
    with run_sandbox(workdir, [PUBLIC_CLIENT, SYMMETRIC_CLIENT]) as process:
        yield process
