"""The refresh token sealed inside auth_state, so that it never leaves the hub.

JupyterHub encrypts auth_state at rest with ``JUPYTERHUB_CRYPT_KEY``, but it
decrypts it for anyone holding ``admin:auth_state``: ``GET
/hub/api/users/{name}`` returns the whole auth_state. The access token there
is the one the token API hands out anyway; the refresh token could mint EHR
access for weeks, so it is stored sealed a second time, under a key only the
hub process derives:

* key: HKDF-SHA256 (RFC 5869) of each ``JUPYTERHUB_CRYPT_KEY`` key, no salt,
  info ``jupyterhub-smart refresh-token v1``, 32 bytes, used as a Fernet key;
* format: ``auth_state["sealed_refresh_token"]`` is a Fernet token of the
  UTF-8 refresh token, and ``auth_state`` has no ``refresh_token`` key;
* rotation: the first key seals, every key opens (``MultiFernet``), as for
  JupyterHub's own encryption; a token is sealed again under the first key
  whenever the auth_state is saved (at every refresh);
* earlier auth_states with a plaintext ``refresh_token`` are read as they are
  and sealed at their next save.

Inside the hub, code works on the opened form (``refresh_token`` in plain
text); :meth:`RefreshTokenSeal.seal` runs on every auth_state handed to
JupyterHub for storage, :meth:`RefreshTokenSeal.open` on every one read back.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["HKDF_INFO", "SEALED_KEY", "RefreshTokenSeal", "SealBroken"]

#: HKDF ``info``: binds the derived key to this one use.
HKDF_INFO = b"jupyterhub-smart refresh-token v1"
#: The auth_state key of the sealed refresh token.
SEALED_KEY = "sealed_refresh_token"


class SealBroken(ValueError):
    """No key opens the sealed refresh token (JUPYTERHUB_CRYPT_KEY changed without the old key)."""


def derive_key(crypt_key: bytes) -> bytes:
    """The Fernet key (urlsafe base64) derived from one JUPYTERHUB_CRYPT_KEY key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(crypt_key))


class RefreshTokenSeal:
    """Seals and opens the refresh token of an auth_state (module docstring)."""

    def __init__(self, crypt_keys: Sequence[bytes]) -> None:
        if not crypt_keys:
            raise ValueError("no JUPYTERHUB_CRYPT_KEY key to derive the refresh-token key from")
        self._fernet = MultiFernet([Fernet(derive_key(key)) for key in crypt_keys])

    def seal(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` for storage: ``refresh_token`` replaced by ``sealed_refresh_token``."""
        sealed = {key: value for key, value in state.items() if key != "refresh_token"}
        token = state.get("refresh_token")
        if isinstance(token, str) and token:
            sealed[SEALED_KEY] = self._fernet.encrypt(token.encode("utf-8")).decode("ascii")
        else:
            sealed.pop(SEALED_KEY, None)
        return sealed

    def open(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` as the hub works on it: ``refresh_token`` in plain text.

        A plaintext ``refresh_token`` (stored before sealing existed) is kept
        as it is. Raises :class:`SealBroken` when no key opens the seal.
        """
        opened = {key: value for key, value in state.items() if key != SEALED_KEY}
        sealed = state.get(SEALED_KEY)
        if isinstance(sealed, str) and sealed:
            try:
                opened["refresh_token"] = self._fernet.decrypt(sealed.encode("ascii")).decode(
                    "utf-8"
                )
            except (InvalidToken, UnicodeError) as exc:
                raise SealBroken(
                    "The stored refresh token was sealed under a key that JUPYTERHUB_CRYPT_KEY "
                    "no longer holds; keep the old key after the new one ('new;old') until "
                    "users have signed in again."
                ) from exc
        return opened
