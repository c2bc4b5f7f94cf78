"""The name of a refused access token on the wire between a notebook and the hub.

A module of its own, with nothing but the standard library, so that kernels
import it without the rest of the SMART core.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["access_token_fingerprint", "fingerprint_matches"]


def access_token_fingerprint(access_token: str) -> str:
    """Hex SHA-256 of an access token (UTF-8): how a notebook names a token it saw refused.

    The one definition of the token API's ``rejected`` value, shared by the
    notebook (which sends it) and the hub (which compares it). Unsalted on
    purpose: both sides compute it independently, and it travels in a URL (so it
    lands in access logs) where the token itself never may. SHA-256 does not give
    the token back; it only lets someone who already holds the token recognise it.
    """
    return hashlib.sha256(access_token.encode("utf-8")).hexdigest()


def fingerprint_matches(access_token: str, fingerprint: str) -> bool:
    """Constant-time: is ``fingerprint`` the SHA-256 of ``access_token``?"""
    return hmac.compare_digest(access_token_fingerprint(access_token), fingerprint)
