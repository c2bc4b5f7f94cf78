"""``/fhir/.well-known/smart-configuration`` (SMART App Launch 2.x "Conformance").

Only capabilities the sandbox really implements are listed, so a client that
gates features on them is tested against the truth.
"""

from __future__ import annotations

from typing import Any

from .. import scopes as scope_rules
from ..settings import SandboxSettings
from .client_auth import ASSERTION_ALGORITHMS

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
]


def smart_configuration(settings: SandboxSettings) -> dict[str, Any]:
    auth = settings.auth_base_url
    return {
        "issuer": settings.issuer,
        "jwks_uri": f"{auth}/jwks",
        "authorization_endpoint": f"{auth}/authorize",
        "token_endpoint": f"{auth}/token",
        "introspection_endpoint": f"{auth}/introspect",
        "revocation_endpoint": f"{auth}/revoke",
        # RECOMMENDED: where a user sees which apps hold access, and revokes it.
        "management_endpoint": f"{settings.origin}/ehr/sessions",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "authorization_response_iss_parameter_supported": True,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": [
            *sorted(scope_rules.IDENTITY_AND_LAUNCH_SCOPES),
            "patient/*.rs",
            "user/*.rs",
            "system/*.rs",
            "patient/*.read",
            "user/*.read",
            "system/*.read",
        ],
        "capabilities": CAPABILITIES,
    }
