"""Fixtures of the protocol-core tests.

``smart_config(**overrides)`` is the discovered configuration of a made-up EHR
at ``ehr.example.org`` (the unit tests' requests never leave the process:
each goes to an ``httpx.MockTransport``); a test overrides the fields it is
about, e.g. ``smart_config(revocation_endpoint=None)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from jupyterhub_smart.smart.discovery import SMARTConfiguration

EHR = "https://ehr.example.org"


_BASE = SMARTConfiguration(
    fhir_base_url=f"{EHR}/fhir",
    issuer=f"{EHR}/auth",
    authorization_endpoint=f"{EHR}/auth/authorize",
    token_endpoint=f"{EHR}/auth/token",
    jwks_uri=f"{EHR}/auth/jwks",
    revocation_endpoint=f"{EHR}/auth/revoke",
    introspection_endpoint=None,
    capabilities=frozenset({"sso-openid-connect"}),
    code_challenge_methods_supported=("S256",),
    scopes_supported=(),
    grant_types_supported=("authorization_code",),
)


@pytest.fixture
def smart_config() -> Callable[..., SMARTConfiguration]:
    """Build the made-up EHR's configuration with some fields replaced."""

    def build(**overrides: Any) -> SMARTConfiguration:
        return replace(_BASE, **overrides)

    return build
