"""Assembles Authlib's Flask authorization server with the sandbox's grants.

:class:`SandboxAuth` is the one object the app, the EHR simulator and the FHIR
server share: the client registry, storage, signing key, the Authlib server
and the token lookup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request
from authlib.integrations.flask_oauth2.signals import client_authenticated
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import request as flask_request

from ..settings import SandboxSettings
from .client_auth import PRIVATE_KEY_JWT, PrivateKeyJWTAuthentication
from .clients import ClientRegistry, SandboxClient
from .grant_types import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    OpenIDCodeExtension,
    RefreshTokenGrant,
    S256CodeChallenge,
    SMARTAuthorizeRules,
)
from .introspection import SMARTIntrospectionEndpoint
from .keys import SigningKey
from .options import AuthOptions
from .pending import PendingStore
from .revocation import SMARTRevocationEndpoint
from .storage import AuthStorage
from .tokens import TokenIssuer, TokenLookup, note_client_id

log = logging.getLogger(__name__)


class StoredAuthorizationRequest(OAuth2Request):
    """An authorize request rebuilt from a pending authorization's parameters.

    The user's decision arrives in a later POST; the grant re-validates the
    original parameters from here rather than from that POST.
    """

    def __init__(self, uri: str, params: dict[str, str]) -> None:
        super().__init__("GET", uri)
        self.payload = BasicOAuth2Payload(dict(params))
        self._params = dict(params)
        #: The launch was consumed when the request first arrived.
        self.launch_consumed = True

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return {}


class SandboxAuthorizationServer(AuthorizationServer):
    """Authlib's Flask server, accepting already-built OAuth2 requests too."""

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return FlaskOAuth2Request(flask_request)

    def handle_error_response(self, request: Any, error: Any) -> Any:
        """Log each refusal (code and description only: neither holds a secret)."""
        description = (error.get_error_description() or "")[:300]
        log.info(
            "%s %s refused: %s: %s",
            flask_request.method,
            flask_request.path,
            error.error,
            description,
        )
        return super().handle_error_response(request, error)


class ResponseIssuer(IssuerParameter):
    """RFC 9207 ``iss`` in authorization responses, so clients can detect mix-up attacks."""

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer

    def get_issuer(self) -> str:
        return self._issuer


@dataclass
class SandboxAuth:
    """Everything the authorization server is made of."""

    settings: SandboxSettings
    options: AuthOptions
    registry: ClientRegistry
    storage: AuthStorage
    signing_key: SigningKey
    server: SandboxAuthorizationServer
    issuer: TokenIssuer
    lookup: TokenLookup
    pending: PendingStore
    http: httpx.Client

    def close(self) -> None:
        self.http.close()
        self.storage.close()


def build_auth(
    settings: SandboxSettings,
    registry: ClientRegistry,
    options: AuthOptions | None = None,
    data_dir: Path | None = None,
) -> SandboxAuth:
    """Create storage and keys under ``data_dir/auth`` and wire Authlib's server."""
    options = options or AuthOptions()
    directory = (data_dir or settings.data_dir) / "auth"
    # Only the sandbox's user may read token hashes and the signing key.
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    storage = AuthStorage(directory / "auth.sqlite")
    signing_key = SigningKey.load_or_create(directory)
    issuer = TokenIssuer(settings, storage, options)
    http = httpx.Client(follow_redirects=False, timeout=options.jwks_fetch_timeout)

    def query_client(client_id: object) -> SandboxClient | None:
        return registry.get(client_id)

    server = SandboxAuthorizationServer(query_client=query_client, save_token=issuer.save)
    # init_app only reads config; token generation is ours, not Authlib's default.
    server.register_token_generator("default", issuer.generate)
    server.register_client_auth_method(
        PRIVATE_KEY_JWT,
        PrivateKeyJWTAuthentication(f"{settings.auth_base_url}/token", storage, options, http),
    )

    # Per-server subclasses, so that two apps in one process never share storage.
    code_grant = type(
        "SandboxAuthorizationCodeGrant",
        (AuthorizationCodeGrant,),
        {"storage": storage, "options": options},
    )
    refresh_grant = type("SandboxRefreshTokenGrant", (RefreshTokenGrant,), {"storage": storage})
    server.register_grant(
        code_grant,
        [
            S256CodeChallenge(),
            SMARTAuthorizeRules(settings, storage),
            OpenIDCodeExtension(settings, storage, signing_key),
        ],
    )
    server.register_extension(ResponseIssuer(settings.issuer))
    server.register_grant(refresh_grant)
    server.register_grant(ClientCredentialsGrant)
    server.register_endpoint(SMARTIntrospectionEndpoint(server, settings, storage))
    server.register_endpoint(SMARTRevocationEndpoint(server, storage))

    def on_client_authenticated(sender: Any, client: Any = None, **_: Any) -> None:
        if client is not None:
            note_client_id(client.client_id)

    client_authenticated.connect(on_client_authenticated, sender=server, weak=False)
    return SandboxAuth(
        settings=settings,
        options=options,
        registry=registry,
        storage=storage,
        signing_key=signing_key,
        server=server,
        issuer=issuer,
        lookup=TokenLookup(storage),
        pending=PendingStore(options.pending_lifetime),
        http=http,
    )
