"""Client authentication at the token endpoint, one class per method.

* ``public``: the client proves nothing; it sends its ``client_id`` (PKCE is
  what protects the code).
* ``client_secret_basic``: HTTP Basic with the id and secret percent-encoded
  first (RFC 6749 2.3.1), so that a secret with ``:`` or ``%`` survives. A
  space becomes ``%20`` rather than form-encoding's ``+``: servers decode with
  either ``unquote`` (Authlib) or ``unquote_plus``, and ``%20`` reads the same
  under both, while ``+`` does not.
* ``private_key_jwt`` (SMART "confidential asymmetric", recommended by RFC
  9700): a one-time JWT signed with the hub's private key, ``iss`` = ``sub`` =
  client_id, ``aud`` = the token endpoint URL, ``exp`` at most 5 minutes ahead
  (4 here, to absorb clock skew), a unique ``jti`` and a ``kid`` header.

Signing goes through joserfc; nothing here builds a JWT by hand. No class puts
its secret or key in its ``repr``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from joserfc import jwt

from .issuers import IssuerRegistration
from .keys import SigningKey, check_alg, default_alg, load_private_key, public_jwk, thumbprint_kid

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "ClientAuthentication",
    "ClientSecretBasic",
    "PrivateKeyJWT",
    "PublicClient",
    "client_authentication_for",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART: "exp ... no more than five minutes in the future".
MAX_ASSERTION_LIFETIME = 300


@runtime_checkable
class ClientAuthentication(Protocol):
    """Adds client credentials to a token, refresh or revocation request."""

    client_id: str
    #: ``public``, ``client_secret_basic`` or ``private_key_jwt``.
    method: str

    def apply(self, token_endpoint: str, form: dict[str, str], headers: dict[str, str]) -> None:
        """Mutate ``form`` and ``headers`` for a POST to ``token_endpoint``."""

    def sensitive_values(self) -> tuple[str, ...]:
        """Raw secrets this method sends, to redact from anything echoed back."""


class PublicClient:
    """A public client: identifies itself with ``client_id`` in the form."""

    method = "public"

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def apply(self, token_endpoint: str, form: dict[str, str], headers: dict[str, str]) -> None:
        form["client_id"] = self.client_id

    def sensitive_values(self) -> tuple[str, ...]:
        return ()

    def __repr__(self) -> str:
        return f"PublicClient(client_id={self.client_id!r})"


class ClientSecretBasic:
    """``client_secret_basic``: ``Authorization: Basic`` of the form-encoded id and secret."""

    method = "client_secret_basic"

    def __init__(self, client_id: str, client_secret: str) -> None:
        if not client_secret:
            raise ValueError("client_secret_basic needs a client secret")
        self.client_id = client_id
        self._secret = client_secret

    def apply(self, token_endpoint: str, form: dict[str, str], headers: dict[str, str]) -> None:
        pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        form.pop("client_id", None)

    def sensitive_values(self) -> tuple[str, ...]:
        return (self._secret, quote(self._secret, safe=""))

    def __repr__(self) -> str:
        return f"ClientSecretBasic(client_id={self.client_id!r}, client_secret=[hidden])"


class PrivateKeyJWT:
    """``private_key_jwt`` with RS384 or ES384 (SMART asymmetric client authentication)."""

    method = "private_key_jwt"

    def __init__(
        self,
        client_id: str,
        key: SigningKey,
        *,
        alg: str | None = None,
        key_id: str | None = None,
        lifetime: int = 240,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not key.is_private:
            raise ValueError("private_key_jwt needs a private key")
        if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
            raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME} seconds")
        self.client_id = client_id
        self.alg = alg or default_alg(key)
        check_alg(key, self.alg)
        self.key_id = key_id or key.kid or thumbprint_kid(key)
        self._key = key
        self.lifetime = lifetime
        self._clock = clock

    def assertion(self, token_endpoint: str) -> str:
        """A fresh signed client assertion for ``token_endpoint``."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_endpoint,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": secrets.token_urlsafe(32),
        }
        header = {"alg": self.alg, "kid": self.key_id, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[self.alg])

    def apply(self, token_endpoint: str, form: dict[str, str], headers: dict[str, str]) -> None:
        form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        form["client_assertion"] = self.assertion(token_endpoint)
        form.pop("client_id", None)

    def sensitive_values(self) -> tuple[str, ...]:
        return ()  # each assertion is in the form, and redacted from there

    def public_jwk(self) -> dict[str, str]:
        """The public JWK that the EHR needs to verify this client's assertions."""
        jwk = public_jwk(self._key, self.alg)
        jwk["kid"] = self.key_id
        return jwk

    def __repr__(self) -> str:
        return f"PrivateKeyJWT(client_id={self.client_id!r}, alg={self.alg!r}, kid={self.key_id!r})"


def client_authentication_for(reg: IssuerRegistration) -> ClientAuthentication:
    """The client authentication for one issuer registration.

    Loads the private key file once (call this at start-up, keep the result);
    ValueError names the issuer and the problem when the key is unusable.
    """
    if reg.client_auth == "public":
        return PublicClient(reg.client_id)
    if reg.client_auth == "client_secret_basic":
        if not reg.client_secret:
            raise ValueError(f"issuer {reg.issuer}: client_secret_basic needs client_secret")
        return ClientSecretBasic(reg.client_id, reg.client_secret)
    if reg.client_auth == "private_key_jwt":
        if not reg.private_key_path:
            raise ValueError(f"issuer {reg.issuer}: private_key_jwt needs private_key_path")
        try:
            key = load_private_key(reg.private_key_path, reg.key_id)
            return PrivateKeyJWT(reg.client_id, key, alg=reg.signing_alg, key_id=reg.key_id)
        except ValueError as exc:
            raise ValueError(f"issuer {reg.issuer}: {exc}") from None
    raise ValueError(f"issuer {reg.issuer}: unknown client_auth {reg.client_auth!r}")
