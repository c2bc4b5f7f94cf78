"""id_token verification: who signed in, proven by the EHR's signature.

OAuthenticator decodes id_tokens with ``verify_signature=False``; here every
id_token is verified before any claim is believed:

* the signing key comes from the ``jwks_uri`` of the issuer's discovery
  document, and only from there: ``jku``, ``x5u``, ``jwk`` and ``x5c`` in the
  token header are ignored (they would let the token name its own key);
* the header ``alg`` must be in an allow-list of asymmetric algorithms, checked
  before any key is looked up: ``none`` and every ``HS*`` are refused, which
  also defeats the "HS256 signed with the RSA public key" confusion; symmetric
  (``oct``) keys in a JWKS are dropped for the same reason;
* an unknown ``kid`` triggers one JWKS refetch (key rotation), rate-limited so
  that tokens with random kids cannot make the hub hammer the EHR;
* ``iss`` must equal the issuer pinned from discovery (mix-up defence), ``aud``
  must contain our client_id (and ``azp`` must be us when there are several
  audiences), ``exp``/``iat``/``nbf`` hold within a leeway, ``sub`` is present,
  and ``nonce`` equals the one this browser's login sent.

Each refusal raises :class:`IDTokenError` naming the failed check, never the token.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry, extract_compact

from ._http import BodyTooLarge, FetchTimeout, fetch, transport_failure
from .discovery import SMARTConfiguration
from .errors import IDTokenError, safe_text
from .singleflight import SingleFlight

__all__ = ["DEFAULT_ALGORITHMS", "JWKSCache", "verify_id_token"]

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "PS256",
    "PS384",
)
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_MAX_ID_TOKEN_LENGTH = 64 * 1024
_MAX_KEYS_TRIED = 8
_MAX_JWKS_BYTES = 512 * 1024
#: Keys imported from one JWKS; real ones hold a handful (current + successor).
_MAX_JWKS_KEYS = 50


class JWKSCache:
    """Fetches and caches the public signing keys of each ``jwks_uri``.

    Keys are kept for ``ttl`` seconds. ``force_refresh`` refetches at most once
    per ``min_refresh_interval`` seconds per URI, so rotation is picked up at
    once but an attacker cannot turn unknown kids into a request flood.
    Concurrent fetches of one URI share a single request.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        ttl: float = 3600.0,
        *,
        min_refresh_interval: float = 30.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self._clock = clock
        self._cache: dict[str, tuple[float, KeySet]] = {}
        self._fetched_at: dict[str, float] = {}
        self._flight: SingleFlight[KeySet] = SingleFlight()

    async def key_set(self, jwks_uri: str, *, force_refresh: bool = False) -> KeySet:
        """The usable public keys at ``jwks_uri``; IDTokenError (502/504) if unavailable."""
        now = self._clock()
        cached = self._cache.get(jwks_uri)
        if cached is not None:
            fresh = cached[0] > now
            throttled = (
                now - self._fetched_at.get(jwks_uri, float("-inf")) < self.min_refresh_interval
            )
            if (fresh and not force_refresh) or (force_refresh and throttled):
                return cached[1]
        return await self._flight.run(jwks_uri, lambda: self._load(jwks_uri))

    async def _load(self, jwks_uri: str) -> KeySet:
        self._fetched_at[jwks_uri] = self._clock()
        try:
            response = await fetch(
                self._http,
                "GET",
                jwks_uri,
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                max_bytes=_MAX_JWKS_BYTES,
            )
        except FetchTimeout:
            raise IDTokenError(
                f"The EHR's JWKS ({jwks_uri}) did not answer within {self.timeout:g} s.", status=504
            ) from None
        except (BodyTooLarge, httpx.HTTPError) as exc:
            raise IDTokenError(
                f"The EHR's JWKS ({jwks_uri}) could not be fetched ({transport_failure(exc)}).",
                status=502,
            ) from None
        if response.status != 200:
            raise IDTokenError(
                f"The EHR's JWKS ({jwks_uri}) answered HTTP {response.status}.", status=502
            )
        try:
            document = response.json()
        except ValueError:
            raise IDTokenError(f"The EHR's JWKS ({jwks_uri}) is not JSON.", status=502) from None
        key_set = _usable_keys(document, jwks_uri)
        self._cache[jwks_uri] = (self._clock() + self.ttl, key_set)
        return key_set


def _usable_keys(document: object, jwks_uri: str) -> KeySet:
    """Import the RSA and EC signature keys of a JWK Set, skipping (and logging) the rest."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise IDTokenError(f"The EHR's JWKS ({jwks_uri}) is not a JWK Set.", status=502)
    keys: list[Any] = []
    if len(document["keys"]) > _MAX_JWKS_KEYS:
        log.warning(
            "%s lists %d keys; only the first %d are used",
            jwks_uri,
            len(document["keys"]),
            _MAX_JWKS_KEYS,
        )
    for jwk in document["keys"][:_MAX_JWKS_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        if kty not in ("RSA", "EC"):
            continue  # oct keys would enable HS* confusion; OKP algorithms are not allowed
        try:
            public = {
                k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")
            }
            keys.append(RSAKey.import_key(public) if kty == "RSA" else ECKey.import_key(public))
        except (JoseError, ValueError, TypeError):
            log.warning(
                "skipping an invalid key (kid %r) in %s", safe_text(jwk.get("kid")), jwks_uri
            )
    return KeySet(keys)


def _compatible(key: Any, alg: str) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    curve = _EC_CURVES.get(alg)
    return isinstance(key, ECKey) and curve is not None and key.curve_name == curve


def _candidates(key_set: KeySet, kid: str | None, alg: str) -> list[Any]:
    return [k for k in key_set if (kid is None or k.kid == kid) and _compatible(k, alg)][
        :_MAX_KEYS_TRIED
    ]


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise IDTokenError(f"The id_token has no {name!r} claim.")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IDTokenError(f"The id_token's {name!r} claim is not a number.")
    return float(value)


def check_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    leeway: int,
    now: float,
) -> None:
    """The OpenID Connect Core 3.1.3.7 claim checks; IDTokenError naming the first failure."""
    iss = claims.get("iss")
    if iss != issuer:
        raise IDTokenError(
            f"The id_token's issuer {safe_text(iss)!r} is not the EHR's issuer {issuer!r}."
        )
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not audiences or not all(isinstance(a, str) for a in audiences):
        raise IDTokenError("The id_token has no valid 'aud' claim.")
    if client_id not in audiences:
        raise IDTokenError(
            f"The id_token was issued to another client (aud does not contain {client_id!r})."
        )
    azp = claims.get("azp")
    if len(audiences) > 1 and azp is None:
        raise IDTokenError("The id_token has several audiences and no 'azp' claim.")
    if azp is not None and azp != client_id:
        raise IDTokenError(f"The id_token's authorized party (azp) is not {client_id!r}.")
    exp = _number(claims, "exp", required=True)
    iat = _number(claims, "iat", required=True)
    nbf = _number(claims, "nbf", required=False)
    if exp is not None and now > exp + leeway:
        raise IDTokenError("The id_token has expired (exp is in the past).")
    if iat is not None and iat > now + leeway:
        raise IDTokenError("The id_token was issued in the future (iat); check the clocks.")
    if nbf is not None and nbf > now + leeway:
        raise IDTokenError("The id_token is not valid yet (nbf).")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise IDTokenError("The id_token has no 'sub' claim.")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str):
            raise IDTokenError("The id_token has no 'nonce' claim, but this login sent one.")
        if not hmac.compare_digest(got.encode(), nonce.encode()):
            raise IDTokenError("The id_token's nonce does not match this login (replayed token?).")


async def verify_id_token(
    id_token: str,
    *,
    config: SMARTConfiguration,
    client_id: str,
    jwks: JWKSCache,
    nonce: str | None,
    leeway: int = 60,
    algorithms: Collection[str] = DEFAULT_ALGORITHMS,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify an id_token's signature and claims; return its claims.

    ``nonce`` is the value this login sent (``None`` if it sent none, in which
    case a nonce in the token is not checked). Raises :class:`IDTokenError`.
    """
    allowed = [a for a in algorithms if a in _ASYMMETRIC]
    if not isinstance(id_token, str) or not id_token:
        raise IDTokenError("The token response has no id_token.")
    if len(id_token) > _MAX_ID_TOKEN_LENGTH or id_token.count(".") != 2:
        raise IDTokenError("The id_token is not a compact JWS.")
    if not config.issuer or not config.jwks_uri:
        raise IDTokenError(
            "The EHR's SMART configuration names no issuer or jwks_uri, so its id_tokens "
            "cannot be verified; remove 'openid' from the scope or fix the EHR's configuration.",
            status=502,
        )
    try:
        header = extract_compact(id_token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise IDTokenError("The id_token's header cannot be decoded.") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise IDTokenError(
            f"The id_token's algorithm {safe_text(alg, 16)!r} is not allowed "
            f"(allowed: {', '.join(allowed)})."
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise IDTokenError("The id_token's 'kid' header is not a string.")

    key_set = await jwks.key_set(config.jwks_uri)
    candidates = _candidates(key_set, kid, alg)
    if not candidates:
        key_set = await jwks.key_set(config.jwks_uri, force_refresh=True)
        candidates = _candidates(key_set, kid, alg)
    if not candidates:
        which = f"kid {safe_text(kid, 64)!r}" if kid else f"algorithm {alg}"
        raise IDTokenError(f"The EHR's JWKS has no key for the id_token's {which}.")

    registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
    claims: dict[str, Any] | None = None
    for key in candidates:
        try:
            claims = dict(jwt.decode(id_token, key, algorithms=[alg], registry=registry).claims)
            break
        except BadSignatureError:
            continue
        except JoseError:
            raise IDTokenError("The id_token is malformed.") from None
    if claims is None:
        raise IDTokenError("The id_token's signature does not verify with the EHR's keys.")
    check_claims(
        claims,
        issuer=config.issuer,
        client_id=client_id,
        nonce=nonce,
        leeway=leeway,
        now=time.time() if now is None else now,
    )
    return claims
