"""RFC 7009 token revocation.

Revoking an access token stops that token; revoking a refresh token ends the
whole grant (every access and refresh token rotated from the same
authorization), as RFC 7009 §2.1 suggests. Unknown tokens answer 200 too.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint

from .grant_types import ALL_METHODS
from .storage import AuthStorage, TokenRecord
from .tokens import note_client_id


class SMARTRevocationEndpoint(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_METHODS

    def __init__(self, server: Any, storage: AuthStorage) -> None:
        super().__init__(server)
        self._storage = storage

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        if not token_string or len(token_string) > 512:
            return None
        # A hint that does not find the token MUST NOT end the search (RFC 7009 §2.1).
        return self._storage.find_token(token_string, token_type_hint) or self._storage.find_token(
            token_string
        )

    def authenticate_token(self, request: Any, client: Any) -> TokenRecord | None:
        note_client_id(client.client_id)
        token = super().authenticate_token(request, client)
        return token if isinstance(token, TokenRecord) else None

    def revoke_token(self, token: TokenRecord, request: Any) -> None:
        if token.matched == "refresh_token":
            self._storage.revoke_family(token.family_id)
        else:
            self._storage.revoke_access(token.id)
