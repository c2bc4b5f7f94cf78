"""What the hub keeps and hands out: auth_state fields, token API body, refresh errors.

Shared by the authenticator and the handlers (kept apart so neither imports the other).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..smart.errors import SMARTError
from ..smart.fingerprint import access_token_fingerprint, fingerprint_matches

__all__ = [
    "SECRET_KEYS",
    "TOKEN_API_FIELDS",
    "AuthStateCache",
    "ForcedRefresh",
    "ForcedRefreshLimiter",
    "MissingPatient",
    "ReauthenticationRequired",
    "RefreshRateLimited",
    "access_token_fingerprint",
    "fingerprint_matches",
    "parse_fingerprint",
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
    """The user's tokens cannot be refreshed: they must sign in again.

    ``recorded``: the ``reauthentication-required`` audit event of this
    occurrence is already written (by the refresh that found out, with the
    EHR's reason). The token API then records nothing more: one occurrence,
    one record, however many callers share the refresh that raised it.
    """

    status = 401
    error = "reauthentication_required"

    def __init__(self, message: str, *, recorded: bool = False) -> None:
        super().__init__(message)
        self.recorded = recorded


class MissingPatient(SMARTError):
    """``launch/patient`` was asked for but the EHR chose no patient."""

    status = 403
    error = "no_patient_context"


def token_api_payload(auth_state: Mapping[str, Any]) -> dict[str, Any]:
    """The token API's JSON body from an auth_state (only the listed fields)."""
    return {key: auth_state.get(key) for key in TOKEN_API_FIELDS}


class RefreshRateLimited(SMARTError):
    """A forced refresh was asked for too soon after the last one for this user."""

    status = 429
    error = "refresh_rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def parse_fingerprint(value: str) -> str:
    """The token API's ``rejected`` value, lower-cased; ValueError when it is not a SHA-256."""
    normalized = value.strip().lower()
    if not _FINGERPRINT.fullmatch(normalized):
        raise ValueError("not 64 hex digits")
    return normalized


@dataclass
class ForcedRefresh:
    """The last forced refresh of one user: when, for which refused token, and how it ended."""

    at: float
    fingerprint: str
    failure: SMARTError | None = None


class ForcedRefreshLimiter:
    """At most one forced refresh per user per interval, remembered in memory.

    A notebook that reports a refused token makes the hub call the EHR's token
    endpoint at once. Concurrent reports share one refresh (the single flight);
    this bounds what a buggy or hostile client can do *after* it: report the
    new token refused too, again and again. Within the interval the hub does
    not call the EHR for that user; it answers from what the last forced
    refresh taught it (``reauthentication_required`` stays so) or 429.
    """

    def __init__(self, max_users: int = 10000) -> None:
        self._last: OrderedDict[str, ForcedRefresh] = OrderedDict()
        self._max_users = max_users

    def recent(self, user: str, interval: float, now: float | None = None) -> ForcedRefresh | None:
        """The user's last forced refresh if it began less than ``interval`` s ago."""
        last = self._last.get(user)
        now = time.monotonic() if now is None else now
        if last is None or now - last.at >= interval:
            return None
        return last

    def started(self, user: str, fingerprint: str, now: float | None = None) -> None:
        self._last[user] = ForcedRefresh(time.monotonic() if now is None else now, fingerprint)
        self._last.move_to_end(user)
        while len(self._last) > self._max_users:
            self._last.popitem(last=False)

    def failed(self, user: str, fingerprint: str, failure: SMARTError) -> None:
        last = self._last.get(user)
        if last is not None and last.fingerprint == fingerprint:
            last.failure = failure


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

    def __init__(self, max_users: int = 10000) -> None:
        self._entries: OrderedDict[str, tuple[bytes, dict[str, Any]]] = OrderedDict()
        self._max_users = max_users

    async def get(self, user: Any) -> dict[str, Any] | None:
        """The user's auth_state (a copy), decrypting only when it changed."""
        encrypted = getattr(user, "encrypted_auth_state", None)
        name = user.name
        if not isinstance(encrypted, bytes):
            self._entries.pop(name, None)
            state = await user.get_auth_state()
            return dict(state) if isinstance(state, Mapping) else None
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
        self._entries[name] = (encrypted, dict(state))
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_users:
            self._entries.popitem(last=False)
        return dict(state)

    def forget(self, name: str) -> None:
        """Drop a user's entry (logout: no decrypted tokens kept in memory for them)."""
        self._entries.pop(name, None)
