"""Signing keys for ``private_key_jwt`` (SMART asymmetric client authentication).

SMART asks clients to support RS384 (RSA) and ES384 (EC P-384). The hub keeps a
private key in a PEM file that only it can read and publishes the public half as
a JWK Set (``{hub}/hub/smart/jwks.json``) that admins register with their EHR.

Publishing is where a slip is fatal: a JWK dict built from a private key
carries ``d``, ``p``, ``q`` ... . :func:`public_jwk` therefore copies an
explicit allow-list of public members instead of deleting private ones.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "SigningKey",
    "default_alg",
    "generate_private_key",
    "load_private_key",
    "public_jwk",
    "public_jwks",
    "thumbprint_kid",
    "write_key_pair",
]

log = logging.getLogger(__name__)

SigningKey = RSAKey | ECKey
SigningAlg = Literal["RS384", "ES384"]
#: JWK members that may be published; everything else (d, p, q, dp, dq, qi, oth) may not.
_PUBLIC_MEMBERS = ("kty", "kid", "alg", "use", "n", "e", "crv", "x", "y")
MIN_RSA_BITS = 2048


def thumbprint_kid(key: SigningKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of the key: a stable, collision-free ``kid``."""
    return key.thumbprint()


def default_alg(key: SigningKey) -> SigningAlg:
    """The SMART algorithm for a key: RS384 for RSA, ES384 for EC P-384."""
    if isinstance(key, RSAKey):
        return "RS384"
    if isinstance(key, ECKey) and key.curve_name == "P-384":
        return "ES384"
    raise ValueError("only RSA and EC P-384 keys can sign SMART client assertions")


def check_alg(key: SigningKey, alg: str) -> None:
    """Refuse a key/algorithm pair that cannot work (ValueError)."""
    if alg == "RS384" and isinstance(key, RSAKey):
        return
    if alg == "ES384" and isinstance(key, ECKey) and key.curve_name == "P-384":
        return
    raise ValueError(
        f"signing_alg {alg!r} does not match the key (RS384 needs RSA, ES384 needs EC P-384)"
    )


def generate_private_key(
    alg: SigningAlg, *, key_id: str | None = None, rsa_bits: int = 3072
) -> SigningKey:
    """A new private key for ``alg``, with ``kid`` (the thumbprint unless given)."""
    key: SigningKey
    if alg == "RS384":
        if rsa_bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        key = RSAKey.generate_key(rsa_bits, {"alg": alg, "use": "sig"}, private=True)
    elif alg == "ES384":
        key = ECKey.generate_key("P-384", {"alg": alg, "use": "sig"}, private=True)
    else:
        raise ValueError(f"alg must be RS384 or ES384, not {alg!r}")
    return _with_kid(key, key_id, alg)


def _with_kid(key: SigningKey, key_id: str | None, alg: str) -> SigningKey:
    """Rebuild the key with kid/alg/use set (joserfc keys are immutable in use)."""
    kid = key_id or thumbprint_kid(key)
    params: dict[str, Any] = {"kid": kid, "alg": alg, "use": "sig"}
    if isinstance(key, RSAKey):
        return RSAKey(key.raw_value, key.raw_value, cast(Any, params))
    return ECKey(key.raw_value, key.raw_value, cast(Any, params))


def load_private_key(path: str | os.PathLike[str], key_id: str | None = None) -> SigningKey:
    """Load a PEM (PKCS#8 or traditional) or private-JWK JSON file.

    Refuses, with a ValueError naming the file (never its content): a missing
    file, a password-protected key (the password would have to live in the
    environment or configuration, next to the key: no gain), a public key, an
    RSA key under 2048 bits, and any curve other than P-384. Warns when the file
    is readable by group or others.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"private key file {str(p)!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"private key file {str(p)!r} cannot be read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "private key file %s is readable by group or others (mode %o); chmod 600 it",
            p,
            stat.S_IMODE(mode),
        )
    raw: Any
    if data.lstrip().startswith(b"{"):
        raw, jwk_kid = _native_from_jwk(data, p)
        key_id = key_id or jwk_kid
    else:
        try:
            raw = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError(
                f"private key file {str(p)!r} is password-protected; store it unencrypted "
                "with mode 600 instead"
            ) from None
        except ValueError:
            hint = " (it holds a public key)" if b"PUBLIC KEY" in data else ""
            raise ValueError(
                f"private key file {str(p)!r} is not a PEM private key{hint}"
            ) from None
    key: SigningKey
    if isinstance(raw, rsa.RSAPrivateKey):
        if raw.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"private key file {str(p)!r}: RSA keys need at least {MIN_RSA_BITS} bits"
            )
        key = RSAKey(raw, raw)
    elif isinstance(raw, ec.EllipticCurvePrivateKey):
        if raw.curve.name != "secp384r1":
            raise ValueError(
                f"private key file {str(p)!r}: EC keys must use the P-384 curve (ES384), "
                f"not {raw.curve.name}"
            )
        key = ECKey(raw, raw)
    else:
        raise ValueError(f"private key file {str(p)!r}: only RSA and EC P-384 keys are supported")
    return _with_kid(key, key_id, default_alg(key))


def _native_from_jwk(data: bytes, p: Path) -> tuple[Any, str | None]:
    """Read a private JWK (JSON) into a ``cryptography`` private key and its ``kid``."""
    try:
        jwk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError(f"private key file {str(p)!r} is neither PEM nor JSON") from None
    if not isinstance(jwk, dict) or "d" not in jwk:
        raise ValueError(f"private key file {str(p)!r} is not a private JWK")
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) and jwk.get("kid") else None
    try:
        if jwk.get("kty") == "RSA":
            return RSAKey.import_key(jwk).raw_value, kid
        if jwk.get("kty") == "EC":
            return ECKey.import_key(jwk).raw_value, kid
    except Exception:
        raise ValueError(f"private key file {str(p)!r} holds an invalid JWK") from None
    raise ValueError(f"private key file {str(p)!r}: only RSA and EC JWKs are supported")


def public_jwk(key: SigningKey, alg: str | None = None) -> dict[str, str]:
    """The public JWK of a key: kty, kid, alg, use=sig and n/e or crv/x/y only."""
    alg = alg or default_alg(key)
    check_alg(key, alg)
    full = key.as_dict(private=False)
    result: dict[str, str] = {
        name: str(full[name])
        for name in _PUBLIC_MEMBERS
        if name in full and isinstance(full[name], str)
    }
    result["kid"] = key.kid or thumbprint_kid(key)
    result["alg"] = alg
    result["use"] = "sig"
    return result


def public_jwks(
    keys: Iterable[SigningKey | tuple[SigningKey, str]],
) -> dict[str, list[dict[str, str]]]:
    """A JWK Set of public keys (``{"keys": [...]}``), duplicates by kid dropped."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in keys:
        key, alg = item if isinstance(item, tuple) else (item, None)
        jwk = public_jwk(key, alg)
        if jwk["kid"] not in seen:
            seen.add(jwk["kid"])
            out.append(jwk)
    return {"keys": out}


def write_key_pair(
    alg: SigningAlg,
    out_dir: str | os.PathLike[str],
    *,
    key_id: str | None = None,
    rsa_bits: int = 3072,
) -> tuple[Path, Path]:
    """Generate a key; write the private PEM (mode 600) and add the public JWK to ``jwks.json``.

    The PEM file name carries the algorithm and the start of the kid, and is
    never overwritten. An existing ``jwks.json`` in ``out_dir`` keeps its keys
    and gains the new one, so that a successor key can be published before it
    is used (rotation without a failed login).
    """
    directory = Path(out_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = generate_private_key(alg, key_id=key_id, rsa_bits=rsa_bits)
    kid = key.kid or thumbprint_kid(key)
    safe_kid = "".join(c for c in kid if c.isalnum() or c in "-_")[:16] or "key"
    pem_path = directory / f"smart-{alg.lower()}-{safe_kid}.pem"
    pem = key.as_pem(private=True)
    fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)

    jwks_path = directory / "jwks.json"
    existing: list[dict[str, Any]] = []
    if jwks_path.exists():
        try:
            loaded = orjson.loads(jwks_path.read_bytes())
            existing = [k for k in loaded.get("keys", []) if isinstance(k, dict)]
        except (orjson.JSONDecodeError, AttributeError):
            raise ValueError(
                f"{jwks_path} exists but is not a JWK Set; move it away first"
            ) from None
        for k in existing:
            if any(m not in _PUBLIC_MEMBERS for m in k):
                raise ValueError(f"{jwks_path} contains private key members; refusing to extend it")
    new = public_jwk(key, alg)
    keys = [k for k in existing if k.get("kid") != new["kid"]] + [new]
    tmp = jwks_path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps({"keys": keys}, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(jwks_path)
    return pem_path, jwks_path
