"""PKCE (RFC 7636, S256 only), ``state`` and ``nonce`` values.

SMART requires PKCE with S256 on every authorization request, confidential
clients included; ``plain`` is never produced. All values come from
:mod:`secrets` (``state`` must be unguessable: SMART asks for at least 122 bits,
we use 256).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

__all__ = ["code_challenge_s256", "new_code_verifier", "new_nonce", "new_state"]

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


def new_code_verifier() -> str:
    """A fresh code verifier: 64 random bytes, base64url, 86 characters (RFC 7636 4.1)."""
    return secrets.token_urlsafe(64)


def code_challenge_s256(verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding (RFC 7636 4.2).

    Refuses verifiers outside RFC 7636's alphabet or length so that a caller's
    bug cannot produce a challenge the server would reject later with a vaguer
    message.
    """
    if not isinstance(verifier, str) or not _VERIFIER.match(verifier):
        raise ValueError("a PKCE code verifier must be 43-128 characters of [A-Za-z0-9-._~]")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """An OAuth ``state``: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    """An OpenID Connect ``nonce``: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)
