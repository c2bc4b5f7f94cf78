"""``private_key_jwt`` client authentication (RFC 7523 §2.2, SMART asymmetric clients).

Authlib's :class:`JWTBearerClientAssertion` does the parsing and signature
check; this subclass adds what SMART App Launch 2.x asks of the server on top:
RS384 or ES384 only, ``kid`` and ``typ: JWT`` in the header, ``aud`` = the
token endpoint URL, ``exp`` at most five minutes ahead, a ``jti`` that is never
accepted twice while it could still be valid, and keys taken from the client's
registered ``jwks`` or ``jwks_uri`` (fetched again when a new ``kid`` shows up,
so that a client can rotate its keys).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .clients import SandboxClient
from .options import AuthOptions
from .storage import AuthStorage

log = logging.getLogger(__name__)

#: The two algorithms SMART asks servers to support for client assertions.
ASSERTION_ALGORITHMS = ("RS384", "ES384")
PRIVATE_KEY_JWT = "private_key_jwt"


class PrivateKeyJWTAuthentication(JWTBearerClientAssertion):
    """Authlib client-auth method registered as ``private_key_jwt``."""

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(
        self, token_url: str, storage: AuthStorage, options: AuthOptions, http: httpx.Client
    ) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self._token_url = token_url
        self._storage = storage
        self._options = options
        self._http = http
        self._jwks_cache: dict[str, tuple[float, KeySet]] = {}
        self._cache_lock = threading.Lock()
        #: Per-thread header of the assertion being checked (waitress serves in threads).
        self._local = threading.local()

    def __call__(self, query_client: Any, request: Any) -> Any:
        """Authenticate, turning every failure into ``invalid_client`` (never a 500)."""
        try:
            client = super().__call__(query_client, request)
        except InvalidClientError:
            raise
        except (JoseError, ValueError, TypeError, KeyError, UnicodeError) as exc:
            raise InvalidClientError(
                description=f"Invalid client assertion ({type(exc).__name__})."
            ) from None
        named = request.form.get("client_id")
        if client is not None and named is not None and named != client.client_id:
            # RFC 7523 §3: a client_id sent alongside must identify the same client.
            raise InvalidClientError(
                description="'client_id' does not match the client assertion's 'sub'."
            )
        return client

    def get_audiences(self) -> list[str]:
        return [self._token_url]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGORITHMS))
        except JoseError as exc:
            log.info("client assertion refused: %s", type(exc).__name__)
            raise InvalidClientError(
                description="Client assertion signature or algorithm is invalid "
                f"(accepted algorithms: {', '.join(ASSERTION_ALGORITHMS)})."
            ) from None
        if token.header.get("alg") not in ASSERTION_ALGORITHMS:  # defence in depth
            raise InvalidClientError(description="Client assertion algorithm is not accepted.")
        self.verify_claims(token.claims)
        return dict(token.claims)

    def verify_claims(self, claims: Any) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise InvalidClientError(description="Client assertion needs a numeric 'exp'.")
        horizon = time.time() + self._options.max_assertion_lifetime + self.leeway
        if exp > horizon:
            raise InvalidClientError(
                description="Client assertion 'exp' is more than "
                f"{self._options.max_assertion_lifetime} seconds in the future."
            )
        if "iss" not in claims or claims.get("iss") != claims.get("sub"):
            raise InvalidClientError(
                description="Client assertion 'iss' and 'sub' must both be the client_id."
            )
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidClientError(description="Client assertion needs a 'jti' string.")
        super().verify_claims(claims)

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return self._storage.remember_jti(str(claims["sub"]), jti, float(claims["exp"]))

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check SMART's header rules before any key is looked up.

        SMART asymmetric authentication asks for ``kid`` (the signing key among the
        client's registered ones) and ``typ: JWT``; refusing their absence with a
        message that names them beats a puzzling "signature invalid". ``jku`` is
        remembered: it is allowed only if it equals the registered JWKS URL.
        """
        headers, claims = super().extract_assertion(assertion)
        if not isinstance(headers, dict):
            raise InvalidClientError(description="Client assertion header is not a JSON object.")
        kid = headers.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidClientError(
                description="Client assertion header needs 'kid': the id of the signing key "
                "in the client's registered JWK Set."
            )
        if headers.get("typ") != "JWT":
            raise InvalidClientError(description="Client assertion header needs 'typ': 'JWT'.")
        self._local.jku = headers.get("jku")
        self._local.kid = kid
        return headers, claims

    def resolve_client_public_key(self, client: SandboxClient) -> KeySet:
        jku = getattr(self._local, "jku", None)
        if jku is not None and jku != client.jwks_uri:
            raise InvalidClientError(
                description="Client assertion 'jku' must be the client's registered jwks_uri."
            )
        kid = getattr(self._local, "kid", None)
        if client.jwks is not None:
            key_set = KeySet.import_key_set(dict(client.jwks))  # type: ignore[arg-type]
        elif client.jwks_uri is None:
            raise InvalidClientError(description="The client has no registered public keys.")
        else:
            key_set = self._fetch_jwks(client.jwks_uri)
            if not _has_kid(key_set, kid):
                # A client rotating keys publishes the new one first: look again (rate-limited).
                key_set = self._fetch_jwks(client.jwks_uri, refetch=True)
        if not _has_kid(key_set, kid):
            raise InvalidClientError(
                description="Client assertion 'kid' names none of the client's registered keys."
            )
        return key_set

    def _fetch_jwks(self, uri: str, *, refetch: bool = False) -> KeySet:
        """The client's JWK Set, cached for ``jwks_cache_seconds``.

        ``refetch`` fetches again unless the cached copy is younger than
        ``jwks_refetch_interval``, so that made-up ``kid`` values cannot make the
        sandbox hammer a client's key server.
        """
        now = time.monotonic()
        with self._cache_lock:
            cached = self._jwks_cache.get(uri)
        if cached:
            age = now - cached[0]
            fresh_enough = (
                age < self._options.jwks_refetch_interval
                if refetch
                else age < self._options.jwks_cache_seconds
            )
            if fresh_enough:
                return cached[1]
        try:
            response = self._http.get(uri, timeout=self._options.jwks_fetch_timeout)
            response.raise_for_status()
            key_set = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, JoseError, TypeError, KeyError) as exc:
            log.warning("cannot fetch client jwks_uri %s: %s", uri, type(exc).__name__)
            raise InvalidClientError(
                description="The client's jwks_uri could not be fetched or parsed."
            ) from None
        with self._cache_lock:
            self._jwks_cache[uri] = (now, key_set)
        return key_set


def _has_kid(key_set: KeySet, kid: str | None) -> bool:
    return kid is not None and any(key.kid == kid for key in key_set.keys)
