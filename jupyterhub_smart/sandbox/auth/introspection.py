"""RFC 7662 token introspection with SMART's fields (SMART App Launch "Token Introspection").

A client may introspect the tokens that were issued to it, authenticating the
way it does at the token endpoint. Inactive, unknown and foreign tokens all
answer ``{"active": false}`` so that the answer reveals nothing.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from ..settings import SandboxSettings
from .grant_types import ALL_METHODS
from .storage import AuthStorage, TokenRecord
from .tokens import note_client_id


class SMARTIntrospectionEndpoint(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ALL_METHODS

    def __init__(self, server: Any, settings: SandboxSettings, storage: AuthStorage) -> None:
        super().__init__(server)
        self._settings = settings
        self._storage = storage

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        if not token_string or len(token_string) > 512:
            return None
        # A hint that does not find the token MUST NOT end the search (RFC 7662 §2.1).
        return self._storage.find_token(token_string, token_type_hint) or self._storage.find_token(
            token_string
        )

    def check_permission(self, token: TokenRecord, client: Any, request: Any) -> bool:
        note_client_id(client.client_id)
        return bool(token.client_id == client.client_id)

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "token_type": "Bearer",
            "exp": int(token.refresh_expires_at or 0)
            if token.matched == "refresh_token"
            else int(token.expires_at),
            "iat": int(token.issued_at),
            "iss": self._settings.issuer,
            "aud": self._settings.fhir_base_url,
        }
        grant = token.grant
        if grant is not None:
            payload["sub"] = grant.sub
            if "fhirUser" in token.scope.split():
                payload["fhirUser"] = f"{self._settings.fhir_base_url}/{grant.fhir_user}"
            if grant.patient:
                payload["patient"] = grant.patient
            if grant.encounter:
                payload["encounter"] = grant.encounter
            if grant.fhir_context:
                payload["fhirContext"] = [dict(item) for item in grant.fhir_context]
        else:
            payload["sub"] = token.client_id
        return payload
