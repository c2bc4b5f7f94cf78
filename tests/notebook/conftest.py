"""Fixtures of the notebook-client tests.

Integration tests use the session's real sandbox (``sandbox`` fixture, 5
patients, seed 7). Faults no real part can produce (a token API that is down,
a 429, a malformed page) come from ``httpx.MockTransport`` given to one
client. Every test's log output is checked for the secrets the tests handled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from leak_scan import saw

from .sandbox_tokens import SEEN_SECRETS


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose log lines (DEBUG and up) hold any secret the tests used.

    Checked: our package's loggers and httpx's request lines (the URLs our
    client requests). httpcore's wire-level DEBUG trace is left out: it echoes
    the test helpers' own token responses, not anything the client logs.
    """
    caplog.set_level(logging.DEBUG)
    yield
    text = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("jupyterhub_smart") or r.name == "httpx"
    )
    saw(*SEEN_SECRETS)  # and the session's secret scan looks for them in every file
    leaked = [s[:6] + "..." for s in SEEN_SECRETS if s and s in text]
    assert not leaked, f"secrets found in the log: {leaked}"
