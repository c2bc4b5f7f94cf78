"""The hub's JWK Set: signing keys in use plus public keys published ahead or kept behind.

An EHR that fetches ``{hub}/hub/smart/jwks.json`` may cache it (for an hour,
a day...). If the set only held the key the hub signs with *now*, switching
to a new key would make every client assertion fail until that cache expired.
``SMARTAuthenticator.published_jwks`` names files of extra public keys, so a
rotation is: publish the successor, wait out the EHR's cache, switch
``private_key_path``, keep the old key published a while, remove it.

These files are read once, at start-up, and refused (the hub does not start)
when they hold anything but public RSA (>= 2048 bits) or EC P-384 signing keys:
a private member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``) or a
symmetric key (``k``) in a file meant for publication means the wrong file was
named, and serving it would give the key away. Error messages name the file and
the key id, never key material. What is served is rebuilt from an allow-list of
public members (:func:`jupyterhub_smart.smart.keys.public_jwk`), never copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey
from jupyterhub.handlers import BaseHandler

from ..smart.keys import MIN_RSA_BITS, SigningKey, check_alg, default_alg, public_jwk

__all__ = ["PRIVATE_MEMBERS", "SMARTJWKSHandler", "jwk_set", "load_published_keys"]

#: JWK members that only private (or symmetric) keys have.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_MAX_FILE = 1 << 20


def load_published_keys(paths: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """``(source, public JWK)`` for every key in ``paths``; ValueError on any bad file."""
    found: list[tuple[str, dict[str, str]]] = []
    for path in paths:
        where = f"published_jwks file {path!r}"
        found += [(where, jwk) for jwk in _keys_of(Path(path), where)]
    return found


def jwk_set(keys: Iterable[tuple[str, Mapping[str, str]]]) -> dict[str, list[dict[str, str]]]:
    """One JWK Set from ``(source, public JWK)`` pairs, in order, one entry per key id.

    The same key listed twice (the signing key is also in the published
    jwks.json, say) is served once; one key id naming two different keys is
    refused, because an EHR would verify with whichever it picked.
    """
    by_kid: dict[str, tuple[str, str, dict[str, str]]] = {}
    for source, jwk in keys:
        kid = jwk["kid"]
        thumbprint = _import(jwk).thumbprint()
        seen = by_kid.get(kid)
        if seen is None:
            by_kid[kid] = (source, thumbprint, dict(jwk))
        elif seen[1] != thumbprint:
            raise ValueError(
                f"key id {kid!r} names two different keys ({seen[0]} and {source}); "
                "give each key its own kid (key_id), e.g. the thumbprint that "
                "`jupyterhub-smart keys generate` uses"
            )
    return {"keys": [jwk for _source, _thumbprint, jwk in by_kid.values()]}


def _keys_of(path: Path, where: str) -> list[dict[str, str]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror})") from None
    if len(data) > _MAX_FILE:
        raise ValueError(f"{where} is larger than {_MAX_FILE} bytes; it is not a JWK Set")
    if data.lstrip().startswith(b"{"):
        return _keys_of_json(data, where)
    if b"PRIVATE KEY" in data:
        raise ValueError(
            f"{where} holds a private key; name the public key or the public jwks.json "
            "instead (`jupyterhub-smart keys generate` writes one next to the private key)"
        )
    try:
        raw = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError(f"{where} is neither a JWK Set, a JWK nor a PEM public key") from None
    key: SigningKey
    if isinstance(raw, rsa.RSAPublicKey):
        key = RSAKey.import_key(data)
    elif isinstance(raw, ec.EllipticCurvePublicKey):
        key = ECKey.import_key(data)
    else:
        raise ValueError(f"{where}: only RSA and EC P-384 public keys can be published")
    _check_strength(key, where)
    return [public_jwk(key, default_alg(key))]


def _keys_of_json(data: bytes, where: str) -> list[dict[str, str]]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError(f"{where} is not valid JSON") from None
    if isinstance(doc, dict) and "keys" in doc:
        items = doc["keys"]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where}: 'keys' must be a non-empty list of JWKs")
    elif isinstance(doc, dict) and "kty" in doc:
        items = [doc]
    else:
        raise ValueError(f"{where} is neither a JWK Set ({{'keys': [...]}}) nor a JWK")
    return [_public(item, f"{where}, key {index + 1}") for index, item in enumerate(items)]


def _public(item: object, where: str) -> dict[str, str]:
    """A published JWK checked and rebuilt from its public members only."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not a JSON object")
    kid = item.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise ValueError(f"{where}: 'kid' must be a non-empty string")
    named = f"{where} (kid {kid!r})" if kid else where
    private = sorted(m for m in PRIVATE_MEMBERS if m in item)
    if private:
        raise ValueError(
            f"{named} holds private key material ({', '.join(private)}); the hub publishes "
            "public keys only: name the public jwks.json, and keep private keys out of it"
        )
    if item.get("use", "sig") != "sig":
        raise ValueError(f"{named}: 'use' is {item.get('use')!r}; only signing keys ('sig')")
    try:
        key = _import(item)
    except ValueError as exc:
        raise ValueError(f"{named}: {exc}") from None
    _check_strength(key, named)
    alg = item.get("alg")
    if alg is None:
        alg = default_alg(key)
    elif not isinstance(alg, str):
        raise ValueError(f"{named}: 'alg' must be RS384 or ES384")
    try:
        check_alg(key, alg)
    except ValueError as exc:
        raise ValueError(f"{named}: {exc}") from None
    jwk = public_jwk(key, alg)
    if kid:
        jwk["kid"] = kid
    return jwk


def _import(jwk: Mapping[str, Any]) -> SigningKey:
    """A joserfc key from a public JWK; ValueError (without key material) when it is not one."""
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise ValueError(f"key type {kty!r} cannot be published (RSA or EC P-384 only)")
    try:
        if kty == "RSA":
            return RSAKey.import_key(dict(jwk))
        return ECKey.import_key(dict(jwk))
    except Exception:
        raise ValueError("not a valid public JWK") from None


def _check_strength(key: SigningKey, where: str) -> None:
    """The same limits as the hub's own signing keys (see smart.keys.load_private_key)."""
    raw = key.raw_value
    if isinstance(raw, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) and raw.key_size < MIN_RSA_BITS:
        raise ValueError(f"{where}: RSA keys need at least {MIN_RSA_BITS} bits")
    if isinstance(key, ECKey) and key.curve_name != "P-384":
        raise ValueError(f"{where}: EC keys must use the P-384 curve (ES384)")


class SMARTJWKSHandler(BaseHandler):
    """``GET /hub/smart/jwks.json``: public keys for ``private_key_jwt`` (register its URL).

    The keys signing now, then those of ``published_jwks`` (a successor published
    before the switch, a predecessor kept after it), checked once at start-up.
    """

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(orjson.dumps(self.authenticator.public_jwks()))
