"""What the hub keeps and hands out: auth_state fields, the token API's body, expiry.

auth_state is the only place EHR tokens live (JupyterHub encrypts it with
JUPYTERHUB_CRYPT_KEY). These functions build it at login, read its expiry,
strip its credentials at logout, and pick the token API's fields from it, so
that the rules for what is secret and what leaves the hub are written once.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from ..smart.discovery import SMARTConfiguration
from ..smart.launch_context import LaunchContext
from ..smart.tokens import TokenResponse

__all__ = [
    "SECRET_KEYS",
    "TOKEN_API_FIELDS",
    "AuthStateCache",
    "expires_within",
    "new_auth_state",
    "parse_fingerprint",
    "token_api_payload",
    "with_refreshed",
    "without_tokens",
]

#: auth_state keys that are credentials: never logged, never returned by the token API
#: (except ``access_token``), never put in the spawner's environment.
SECRET_KEYS = frozenset({"access_token", "refresh_token", "id_token", "sealed_refresh_token"})

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

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def new_auth_state(
    issuer: str,
    config: SMARTConfiguration,
    token: TokenResponse,
    context: LaunchContext,
    fhir_user: str | None,
    sub: str | None,
) -> dict[str, Any]:
    """The JSON-serialisable auth_state of a login, which JupyterHub encrypts and stores."""
    now = time.time()
    state: dict[str, Any] = {
        "iss": issuer,
        "fhir_base_url": config.fhir_base_url,
        "authorization_server": config.issuer,
        "access_token": token.access_token,
        "token_type": token.token_type,
        "refresh_token": token.refresh_token,
        "expires_at": token.expires_at,
        "scope": list(token.scope),
        "fhirUser": fhir_user,
        "sub": sub,
        "issued_at": now,
        "signed_in_at": now,
    }
    state.update(context.to_dict())
    return state


def with_refreshed(state: Mapping[str, Any], token: TokenResponse) -> dict[str, Any]:
    """``state`` with the token fields of a refresh response (the launch context kept).

    Without a new refresh token the old one stays: the EHR did not rotate it.
    """
    fresh = dict(state)
    fresh.update(
        access_token=token.access_token,
        token_type=token.token_type,
        issued_at=time.time(),
        expires_at=token.expires_at,
        scope=list(token.scope),
    )
    if token.refresh_token:
        fresh["refresh_token"] = token.refresh_token
    return fresh


def without_tokens(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every credential removed and marked expired (logout, a dead grant).

    The rest (issuer, fhirUser, patient) stays, so the hub can still say who
    the user was and where they must sign in again.
    """
    kept = {key: value for key, value in state.items() if key not in SECRET_KEYS}
    kept["expires_at"] = 0
    return kept


def expires_within(state: Mapping[str, Any], seconds: float) -> bool:
    """True when the access token expires within ``seconds``.

    The leeway is capped at half the token's lifetime: an EHR that issues
    tokens shorter than the leeway would otherwise make every call refresh.
    """
    expires_at = state.get("expires_at")
    if not isinstance(expires_at, (int, float)):
        return False  # the EHR did not say: use it until the FHIR server refuses it
    issued_at = state.get("issued_at")
    if isinstance(issued_at, (int, float)) and expires_at > issued_at:
        seconds = min(seconds, (float(expires_at) - float(issued_at)) / 2)
    return float(expires_at) - time.time() <= seconds


def token_api_payload(auth_state: Mapping[str, Any]) -> dict[str, Any]:
    """The token API's JSON body from an auth_state (only the listed fields)."""
    return {key: auth_state.get(key) for key in TOKEN_API_FIELDS}


def parse_fingerprint(value: str) -> str:
    """The token API's ``rejected`` value, lower-cased; ValueError when it is not a SHA-256."""
    normalized = value.strip().lower()
    if not _FINGERPRINT.fullmatch(normalized):
        raise ValueError("not 64 hex digits")
    return normalized


class AuthStateCache:
    """Decrypted auth_state per user, reused while the stored ciphertext is unchanged.

    The token API is called by every kernel before FHIR requests; decrypting
    auth_state (a thread-pool hop, Fernet and JSON) on each call was the
    largest part of its own cost. The cache key is the encrypted blob itself
    (``user.encrypted_auth_state``, in memory: JupyterHub's session does not
    expire objects on commit), so *any* write of auth_state, by a refresh, a
    new EHR launch for another patient, a logout or an admin's API call,
    changes the key and the next read decrypts again: no invalidation call can
    be forgotten. Callers get a copy, never the cached dict.

    Holding decrypted tokens in memory adds no exposure a memory dump of the
    hub would not already have (the process holds JUPYTERHUB_CRYPT_KEY); a
    logout drops the user's entry, and at most ``max_users`` are kept.
    """

    def __init__(
        self,
        opener: Callable[[str, Mapping[str, Any]], dict[str, Any]] = lambda _name, state: dict(
            state
        ),
        max_users: int = 10000,
    ) -> None:
        #: Turns a stored auth_state into the form the hub works on (the sealed refresh
        #: token opened): done once per stored version, like the decryption.
        self._open = opener
        self._entries: OrderedDict[str, tuple[bytes, dict[str, Any]]] = OrderedDict()
        self._max_users = max_users

    async def get(self, user: Any) -> dict[str, Any] | None:
        """The user's auth_state (a copy), decrypting only when it changed."""
        encrypted = getattr(user, "encrypted_auth_state", None)
        name = user.name
        if not isinstance(encrypted, bytes):
            self._entries.pop(name, None)
            state = await user.get_auth_state()
            return self._open(name, state) if isinstance(state, Mapping) else None
        hit = self._entries.get(name)
        if hit is not None and hit[0] == encrypted:
            self._entries.move_to_end(name)
            return dict(hit[1])
        state = await user.get_auth_state()  # decrypts ``encrypted`` (or what replaced it)
        if not isinstance(state, Mapping):
            self._entries.pop(name, None)
            return None
        # Keyed by the ciphertext read *before* decrypting: if a write raced with the
        # decryption, the key no longer matches and the next call decrypts again.
        opened = self._open(name, state)
        self._entries[name] = (encrypted, opened)
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_users:
            self._entries.popitem(last=False)
        return dict(opened)

    def forget(self, name: str) -> None:
        """Drop a user's entry (logout: no decrypted tokens kept in memory for them)."""
        self._entries.pop(name, None)
