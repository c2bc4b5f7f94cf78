"""What the hub keeps and hands out: auth_state fields, token API body, refresh errors.

Shared by the authenticator and the handlers (kept apart so neither imports the other).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..smart.errors import SMARTError

__all__ = [
    "SECRET_KEYS",
    "TOKEN_API_FIELDS",
    "MissingPatient",
    "ReauthenticationRequired",
    "token_api_payload",
]

#: auth_state keys that are credentials: never logged, never returned by the token API
#: (except ``access_token``), never put in the spawner's environment.
SECRET_KEYS = frozenset({"access_token", "refresh_token", "id_token"})

#: What the token API returns (the refresh token is never among them).
TOKEN_API_FIELDS = (
    "access_token",
    "token_type",
    "expires_at",
    "scope",
    "fhir_base_url",
    "patient",
    "encounter",
    "fhirUser",
    "need_patient_banner",
    "smart_style_url",
)


class ReauthenticationRequired(SMARTError):
    """The user's tokens cannot be refreshed: they must sign in again."""

    status = 401
    error = "reauthentication_required"


class MissingPatient(SMARTError):
    """``launch/patient`` was asked for but the EHR chose no patient."""

    status = 403
    error = "no_patient_context"


def token_api_payload(auth_state: Mapping[str, Any]) -> dict[str, Any]:
    """The token API's JSON body from an auth_state (only the listed fields)."""
    return {key: auth_state.get(key) for key in TOKEN_API_FIELDS}
