"""The hub's connections to its EHRs: allow-list, client credentials, HTTP, caches.

One object holds everything the hub needs to send a request to an EHR, so
that the login, refresh and logout paths all go through the same allow-list
(an ``iss`` not configured is never contacted), the same client
authentication per issuer, and one HTTP client that verifies TLS and never
follows a redirect (a redirect could carry a token elsewhere).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx

from ..smart.client_auth import ClientAuthentication, PrivateKeyJWT, client_authentication_for
from ..smart.discovery import DiscoveryCache, SMARTConfiguration
from ..smart.errors import DiscoveryError
from ..smart.id_token import JWKSCache
from ..smart.issuers import IssuerPolicy, IssuerRegistration

__all__ = ["EHRConnections"]


class EHRConnections:
    """Allow-list, per-issuer client authentication, one HTTP client, discovery and JWKS.

    Every client credential is loaded here, at construction: a missing or bad
    key file stops the hub at start-up instead of failing the first login.
    """

    def __init__(
        self,
        policy: IssuerPolicy,
        *,
        timeout: float,
        cache_ttl: float,
        on_discovery: Callable[[str, DiscoveryError | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        #: Trust for every EHR (``ehr_ca_bundle``); None: httpx's default (certifi, or
        #: SSL_CERT_FILE / SSL_CERT_DIR from the hub's environment).
        self.ssl_context = ssl_context
        #: Hears the end of every discovery fetch (readiness and metrics, :mod:`.health`).
        self.on_discovery = on_discovery
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.clients: dict[str, ClientAuthentication] = {
            reg.issuer: client_authentication_for(reg) for reg in policy.registrations()
        }
        self._http: httpx.AsyncClient | None = None
        self._discovery: DiscoveryCache | None = None
        self._jwks: JWKSCache | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """One HTTP client for every EHR (TLS verified, no redirects followed).

        Discovery, JWKS, the token endpoint and revocation all go through it, so
        ``ehr_ca_bundle`` covers each of them.
        """
        if self._http is None:
            self._http = httpx.AsyncClient(
                verify=self.ssl_context if self.ssl_context is not None else True,
                timeout=self.timeout,
                follow_redirects=False,
                headers={"User-Agent": "jupyterhub-smart"},
            )
        return self._http

    @property
    def discovery(self) -> DiscoveryCache:
        """Each issuer's SMART configuration, cached for ``cache_ttl`` seconds."""
        if self._discovery is None:
            self._discovery = DiscoveryCache(
                self.http, ttl=self.cache_ttl, timeout=self.timeout, observer=self.on_discovery
            )
        return self._discovery

    @property
    def jwks(self) -> JWKSCache:
        """Each authorization server's id_token keys, cached for ``cache_ttl`` seconds."""
        if self._jwks is None:
            self._jwks = JWKSCache(self.http, ttl=self.cache_ttl, timeout=self.timeout)
        return self._jwks

    def registration(self, iss: str) -> IssuerRegistration:
        """The registration of ``iss``; UnknownIssuer, never a network request."""
        return self.policy.get(iss)

    def configured(self, iss: object) -> bool:
        """True when ``iss`` (as stored in an auth_state) is an issuer this hub still has."""
        return isinstance(iss, str) and iss in self.policy

    async def endpoints(self, iss: str) -> tuple[SMARTConfiguration, ClientAuthentication]:
        """The discovered configuration of a configured ``iss`` and this hub's client there."""
        reg = self.registration(iss)
        return await self.discovery.get(reg.issuer), self.clients[reg.issuer]

    def signing_keys(self) -> list[tuple[str, dict[str, str]]]:
        """``(source, public JWK)`` of every ``private_key_jwt`` key in use."""
        return [
            (f"the private_key_path of {issuer}", client.public_jwk())
            for issuer, client in self.clients.items()
            if isinstance(client, PrivateKeyJWT)
        ]
