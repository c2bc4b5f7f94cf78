"""OAuth grant types (authorization_code, refresh_token, client_credentials) with SMART rules.

Each class overrides only what Authlib leaves to the application (storage) or
what SMART is stricter about than plain OAuth: PKCE S256 on every request,
``aud`` = the FHIR base URL, single-use launches bound to a client, codes whose
replay revokes what they issued, refresh tokens that rotate and whose reuse
revokes the whole grant, and Backend Services limited to ``system/`` scopes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, UserInfo

from ..settings import SandboxSettings
from .clients import SandboxClient
from .context import GrantContext
from .keys import SigningKey
from .options import AuthOptions
from .storage import AuthStorage, CodeRecord, TokenRecord

log = logging.getLogger(__name__)

CONFIDENTIAL_METHODS = ["client_secret_basic", "private_key_jwt"]
ALL_METHODS = ["none", *CONFIDENTIAL_METHODS]
#: Seconds an id_token stays valid at least.
ID_TOKEN_MIN_LIFETIME = 300


class S256CodeChallenge(CodeChallenge):
    """PKCE required on every authorization request, with S256 only.

    Authlib's ``CodeChallenge(required=True)`` lets confidential clients skip
    PKCE and defaults a missing method to ``plain``; SMART allows neither.
    """

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(
                "PKCE is required: send 'code_challenge' with 'code_challenge_method=S256'."
            )
        method = data.get("code_challenge_method")
        if method != "S256":
            raise InvalidRequestError(
                "Only 'code_challenge_method=S256' is supported; 'plain' and a missing method are refused."
            )
        super().validate_code_challenge(grant, redirect_uri)


class SMARTAuthorizeRules:
    """Authorize-time checks: ``aud`` is the FHIR base, ``launch`` is usable."""

    def __init__(self, settings: SandboxSettings, storage: AuthStorage) -> None:
        self._settings = settings
        self._storage = storage

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self.validate)

    def validate(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("state"):
            raise InvalidRequestError(
                "The 'state' parameter is required (SMART App Launch): send an unguessable value."
            )
        aud = data.get("aud")
        if not aud:
            raise InvalidRequestError(
                f"The 'aud' parameter is required and must be the FHIR base URL {self._settings.fhir_base_url}."
            )
        if aud != self._settings.fhir_base_url:
            raise InvalidRequestError(
                f"The 'aud' parameter must be the FHIR base URL {self._settings.fhir_base_url}."
            )
        launch = data.get("launch")
        if launch and not getattr(grant.request, "launch_consumed", False):
            if "launch" not in (grant.request.payload.scope or "").split():
                raise InvalidScopeError(
                    description="An EHR launch must request the 'launch' scope with the 'launch' value."
                )
            problem = self._storage.check_launch(launch, grant.request.client.client_id)
            if problem:
                raise InvalidRequestError(problem)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    """Codes: single-use, short-lived, bound to client, redirect URI and PKCE."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    AUTHORIZATION_CODE_LENGTH = 43
    #: Set per server by :func:`.server.build_auth`.
    storage: AuthStorage
    options: AuthOptions

    def save_authorization_code(self, code: str, request: Any) -> None:
        approval: GrantContext = request.user
        data = request.payload.data
        self.storage.save_code(
            code,
            client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri,
            scope=approval.scope,
            nonce=data.get("nonce"),
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            grant=approval,
            lifetime=self.options.code_lifetime,
        )

    def query_authorization_code(self, code: str, client: SandboxClient) -> CodeRecord | None:
        record = self.storage.find_code(code)
        if record is None:
            return None
        if record.used:
            revoked = self.storage.revoke_family(record.family_id)
            log.warning(
                "authorization code replayed by client_id=%s; revoked %d token(s) it issued",
                client.client_id,
                revoked,
            )
            raise InvalidGrantError(
                "The authorization code was already used; the tokens it issued are revoked."
            )
        if record.client_id != client.client_id:
            raise InvalidGrantError("The authorization code was issued to another client.")
        if record.expires_at <= time.time():
            raise InvalidGrantError("The authorization code has expired.")
        return record

    def validate_token_request(self) -> None:
        """Authlib skips the redirect URI check when none was stored; we always store one."""
        super().validate_token_request()
        if self.request.payload.redirect_uri != self.request.authorization_code.redirect_uri:
            raise InvalidGrantError(
                "The 'redirect_uri' must be the one of the authorization request."
            )

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        if not self.storage.claim_code(authorization_code.code_hash):
            self.storage.revoke_family(authorization_code.family_id)
            raise InvalidGrantError(
                "The authorization code was used concurrently; its tokens are revoked."
            )

    def authenticate_user(self, authorization_code: CodeRecord) -> GrantContext:
        return authorization_code.grant


class OpenIDCodeExtension(OpenIDCode):
    """id_token for ``openid``: ``iss``, ``aud`` = client_id, ``sub``, ``fhirUser``, ``nonce``."""

    def __init__(self, settings: SandboxSettings, storage: AuthStorage, key: SigningKey) -> None:
        super().__init__(require_nonce=False)
        self._settings = settings
        self._storage = storage
        self._key = key

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self._storage.nonce_seen(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: SandboxClient) -> Any:
        return self._key.key

    def get_client_algorithm(self, client: SandboxClient) -> str:
        return self._key.alg

    def get_encode_header(self, client: SandboxClient) -> dict[str, str]:
        return {"alg": self._key.alg, "kid": self._key.kid, "typ": "JWT"}

    def get_client_claims(self, client: SandboxClient) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self._settings.issuer,
            "aud": client.client_id,
            "iat": now,
            # Not tied to a (possibly one-second) access token lifetime: clients verify it later.
            "exp": now + max(self._settings.access_token_lifetime, ID_TOKEN_MIN_LIFETIME),
        }

    def generate_user_info(self, user: GrantContext, scope: str) -> UserInfo:
        info = UserInfo(sub=user.sub)
        if "fhirUser" in scope.split():
            info["fhirUser"] = f"{self._settings.fhir_base_url}/{user.fhir_user}"
        return info


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """Rotating refresh tokens: each works once; a reused one revokes the grant."""

    TOKEN_ENDPOINT_AUTH_METHODS = ALL_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    storage: AuthStorage

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        record = self.storage.find_token(refresh_token, "refresh_token")
        if record is None:
            return None
        if record.refresh_state == "rotated":
            revoked = self.storage.revoke_family(record.family_id)
            log.warning(
                "rotated refresh token reused (client_id=%s); revoked %d token(s) of its grant",
                record.client_id,
                revoked,
            )
            raise InvalidGrantError(
                "The refresh token was already used; every token of this grant is now revoked."
            )
        if record.refresh_state != "active":
            raise InvalidGrantError("The refresh token was revoked.")
        if record.is_expired():
            raise InvalidGrantError("The refresh token has expired.")
        return record

    def authenticate_user(self, refresh_token: TokenRecord) -> GrantContext | None:
        return refresh_token.grant

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        if not self.storage.rotate_refresh(refresh_token.id):
            self.storage.revoke_family(refresh_token.family_id)
            raise InvalidGrantError(
                "The refresh token was used concurrently; the grant is revoked."
            )


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """Backend Services: confidential clients only, ``system/`` scopes only."""

    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_METHODS

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                "This client may not use 'client_credentials': Backend Services are for "
                "confidential clients registered with 'system/' scopes."
            )
        self.request.client = client
        granted = client.allowed_system_scope(self.request.payload.scope)
        if not granted:
            raise InvalidScopeError(
                description="No requested scope can be granted: Backend Services need "
                "'system/' scopes within the client's registration."
            )
        self.request.scope = granted

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER
