"""Issuing, storing and looking up bearer tokens.

Access and refresh tokens are random strings (no JWT: the FHIR server asks the
authorization server through :class:`TokenLookup`, so nothing needs to be
self-contained). The token response carries the SMART launch context next to
the OAuth fields; the same context is stored (with hashed handles) so that
refreshes and introspection repeat it.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import has_request_context, request

from ..access_grant import AccessGrant
from ..settings import SandboxSettings
from .context import GrantContext
from .options import AuthOptions
from .storage import AuthStorage, new_family_id

#: Scopes that make the token response carry a refresh token.
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})
#: WSGI environ key through which the request log learns the client of a request.
CLIENT_ID_ENVIRON_KEY = "jupyterhub_smart.client_id"


def note_client_id(client_id: str | None) -> None:
    """Tell the request log which client made the current request (not a secret)."""
    if client_id and has_request_context():
        request.environ[CLIENT_ID_ENVIRON_KEY] = client_id


class TokenIssuer:
    """Authlib token generator and ``save_token`` callback in one place."""

    def __init__(
        self, settings: SandboxSettings, storage: AuthStorage, options: AuthOptions
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._options = options

    @property
    def style_url(self) -> str:
        return f"{self._settings.origin}/ehr/smart-style.json"

    def lifetime(self, grant_type: str) -> int:
        if grant_type == "client_credentials":
            return min(
                self._settings.access_token_lifetime, self._options.max_system_token_lifetime
            )
        return self._settings.access_token_lifetime

    def generate(
        self,
        grant_type: str,
        client: Any,
        user: GrantContext | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Build the token response; ``scope`` was already decided by the grant."""
        scope = scope or ""
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": secrets.token_urlsafe(32),
            "expires_in": expires_in or self.lifetime(grant_type),
            "scope": scope,
        }
        if (
            include_refresh_token
            and grant_type != "client_credentials"
            and REFRESH_SCOPES & set(scope.split())
        ):
            token["refresh_token"] = secrets.token_urlsafe(32)
        if isinstance(user, GrantContext):
            token.update(user.token_fields(self.style_url))
        return token

    def save(self, token: dict[str, Any], oauth_request: Any) -> None:
        """Persist a freshly issued token (hashed), linked to its grant family."""
        grant_type = oauth_request.payload.grant_type
        if grant_type == "authorization_code":
            family_id = oauth_request.authorization_code.family_id
        elif grant_type == "refresh_token":
            family_id = oauth_request.refresh_token.family_id
        else:
            family_id = new_family_id()
        user = oauth_request.user if isinstance(oauth_request.user, GrantContext) else None
        self._storage.save_token(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client_id=oauth_request.client.client_id,
            scope=token["scope"],
            grant=user.with_scope(token["scope"]) if user else None,
            family_id=family_id,
            expires_in=token["expires_in"],
            refresh_lifetime=self._settings.refresh_token_lifetime,
        )
        note_client_id(oauth_request.client.client_id)


class TokenLookup:
    """The :data:`~jupyterhub_smart.sandbox.access_grant.GrantLookup` the FHIR server calls."""

    def __init__(self, storage: AuthStorage) -> None:
        self._storage = storage

    def __call__(self, access_token: str) -> AccessGrant | None:
        if not isinstance(access_token, str) or not access_token or len(access_token) > 512:
            return None
        record = self._storage.find_token(access_token, "access_token")
        if record is None or record.is_revoked() or record.is_expired():
            return None
        note_client_id(record.client_id)
        grant = record.grant
        return AccessGrant(
            client_id=record.client_id,
            scopes=tuple(record.scope.split()),
            patient=grant.patient if grant else None,
            encounter=grant.encounter if grant else None,
            fhir_user=grant.fhir_user if grant else None,
            expires_at=record.expires_at,
        )
