"""SMART Backend Services for bulk export: ``client_credentials`` with a ``private_key_jwt`` assertion.

The assertion is the core's :class:`~jupyterhub_smart.smart.client_auth.PrivateKeyJWT`
(RS384 or ES384 from a PEM or JWK file, ``kid``, fresh ``jti``, ``exp`` at most
5 minutes ahead) and the answer is checked by the core's
:func:`~jupyterhub_smart.smart.tokens.parse_token_response`. Backend Services
tokens are short (5 minutes is typical) and come without a refresh token, so
:class:`BackendServicesAuth` mints a new one with a new assertion shortly
before the current one expires, and once more if a request answers 401: a
two-hour download never runs on an expired token. It is an ``httpx.Auth``,
thread-safe, so parallel downloads share one token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import httpx

from ..smart.client_auth import PrivateKeyJWT
from ..smart.discovery import parse_smart_configuration
from ..smart.errors import SMARTError, TokenEndpointError, redact, safe_text
from ..smart.keys import load_private_key
from ..smart.tokens import TokenResponse, parse_token_response
from .errors import BulkError

#: Re-mint when less than this share of the token's lifetime is left (at most 60 s before).
RENEW_FRACTION = 0.2


def discover_token_endpoint(http: httpx.Client, fhir_url: str) -> str:
    """The ``token_endpoint`` of ``{fhir_url}/.well-known/smart-configuration``."""
    url = fhir_url.rstrip("/") + "/.well-known/smart-configuration"
    try:
        response = http.get(url, headers={"Accept": "application/json"}, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise BulkError(f"SMART discovery at {url} failed ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise BulkError(f"SMART discovery at {url} answered HTTP {response.status_code}")
    try:
        config = parse_smart_configuration(fhir_url.rstrip("/"), response.json())
    except (ValueError, SMARTError) as exc:
        raise BulkError(f"SMART discovery at {url}: {exc}") from None
    return config.token_endpoint


class BackendServicesAuth(httpx.Auth):
    """Bearer tokens from ``client_credentials`` + ``private_key_jwt``, renewed before expiry."""

    def __init__(
        self,
        http: httpx.Client,
        token_endpoint: str,
        client_id: str,
        key_file: str,
        scope: str,
        *,
        key_id: str | None = None,
        alg: str | None = None,
        clock: Any = time.time,
    ) -> None:
        try:
            key = load_private_key(key_file, key_id)
            self._assertion = PrivateKeyJWT(client_id, key, alg=alg, key_id=key_id)
        except ValueError as exc:
            raise BulkError(f"--key: {exc}") from None
        self._http = http
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self.scope = scope
        self._clock = clock
        self._lock = threading.Lock()
        self._token: TokenResponse | None = None
        self._minted_at = 0.0
        #: How many tokens were minted (tests check renewal with it).
        self.mint_count = 0

    @property
    def granted_scope(self) -> tuple[str, ...]:
        """Scopes of the current token (minting one if there is none)."""
        return self._current().scope

    def _mint(self) -> TokenResponse:
        form = {"grant_type": "client_credentials", "scope": self.scope}
        headers = {"Accept": "application/json"}
        self._assertion.apply(self.token_endpoint, form, headers)
        try:
            response = self._http.post(
                self.token_endpoint, data=form, headers=headers, follow_redirects=False
            )
        except httpx.HTTPError as exc:
            raise BulkError(
                f"the token endpoint {self.token_endpoint} could not be reached ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            detail = ""
            try:
                data = response.json()
                if isinstance(data, dict):
                    detail = f"{data.get('error', '')}: {data.get('error_description', '')}"
            except ValueError:
                pass
            detail = safe_text(redact(detail, list(form.values())), 200)
            raise BulkError(
                f"the token endpoint refused client_credentials for {self.client_id!r} "
                f"(HTTP {response.status_code} {detail}); check the client id, its registered "
                f"key (JWKS) and the scopes"
            )
        try:
            token = parse_token_response(response.json(), requested_scope=self.scope)
        except (ValueError, TokenEndpointError) as exc:
            raise BulkError(f"the token endpoint's answer is unusable: {exc}") from None
        self.mint_count += 1
        return token

    def _current(self, *, force: bool = False) -> TokenResponse:
        with self._lock:
            now = self._clock()
            token = self._token
            if token is not None and not force:
                if token.expires_at is None:
                    return token
                lifetime = max(1.0, token.expires_at - self._minted_at)
                if token.expires_at - now > min(60.0, RENEW_FRACTION * lifetime):
                    return token
            self._minted_at = now
            self._token = self._mint()
            return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        if response.status_code == 401:
            token = self._current(force=True)
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            yield request

    def __repr__(self) -> str:
        return f"BackendServicesAuth(client_id={self.client_id!r}, scope={self.scope!r})"
