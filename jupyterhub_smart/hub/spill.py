"""Refreshed tokens the database did not take, kept on local disk, encrypted, until it does.

:mod:`.unsaved` keeps such tokens in memory and retries the write. A hub
killed meanwhile (SIGKILL, an out-of-memory kill, a node lost) would lose
them, and with them the only refresh token the EHR still honours: the user's
grant would end at the next refresh. So each one is also written here before
the refresh returns, and read back when the hub starts.

* one file per user (named by the SHA-256 of the username), replaced
  atomically (write, ``fsync``, rename, ``fsync`` of the folder), mode 0600 in
  a 0700 folder, deleted once the database holds the tokens;
* the content is a Fernet token of JSON ``{"name", "state", "base"}``
  (``base``: the SHA-256 of the stored ciphertext the refresh started from),
  under a key derived from each ``JUPYTERHUB_CRYPT_KEY`` key with HKDF-SHA256,
  info ``jupyterhub-smart unsaved-tokens v1``, as :mod:`.sealed` does: nothing
  in the folder is readable without the hub's crypt key, and the first key
  seals while every key opens (key rotation);
* a file no key opens is left in place and logged (an operator restoring the
  old key can still recover it); it is never deleted silently.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..audit.spool import atomic_write

__all__ = ["HKDF_INFO", "SpilledTokens", "TokenSpill", "digest"]

#: HKDF ``info``: binds the derived key to this one use (not the refresh-token seal's key).
HKDF_INFO = b"jupyterhub-smart unsaved-tokens v1"
SUFFIX = ".fernet"


def digest(ciphertext: bytes | None) -> str | None:
    """The SHA-256 (hex) of a stored auth_state ciphertext; None for none."""
    return hashlib.sha256(ciphertext).hexdigest() if ciphertext is not None else None


@dataclass(frozen=True)
class SpilledTokens:
    """One user's refreshed auth_state read back from the folder."""

    name: str
    state: dict[str, Any]
    base: str | None


class TokenSpill:
    """The folder of encrypted unsaved tokens (module docstring)."""

    def __init__(self, directory: Path, crypt_keys: Sequence[bytes], log: logging.Logger) -> None:
        if not crypt_keys:
            raise ValueError("no JUPYTERHUB_CRYPT_KEY key to derive the unsaved-tokens key from")
        self.directory = directory
        self.log = log
        self._fernet = MultiFernet([Fernet(_derive_key(key)) for key in crypt_keys])

    def _path(self, name: str) -> Path:
        return self.directory / (hashlib.sha256(name.encode("utf-8")).hexdigest() + SUFFIX)

    def write(self, name: str, state: dict[str, Any], base: str | None) -> None:
        """Replace ``name``'s file with ``state``, durably (synced before this returns)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        sealed = self._fernet.encrypt(orjson.dumps({"name": name, "state": state, "base": base}))
        atomic_write(self._path(name), sealed)

    def remove(self, name: str) -> None:
        """Delete ``name``'s file (the database holds the tokens now, or they were dropped)."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return
        self._sync_directory()

    def read_all(self) -> list[SpilledTokens]:
        """Every file the crypt keys open; the others are logged and left in place."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            try:
                entry = orjson.loads(self._fernet.decrypt(path.read_bytes()))
                found.append(SpilledTokens(entry["name"], dict(entry["state"]), entry["base"]))
            except (InvalidToken, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.log.error(
                    "Unsaved SMART tokens in %s cannot be opened with JUPYTERHUB_CRYPT_KEY "
                    "(a key was replaced?): left in place",
                    path,
                )
        return found

    def _sync_directory(self) -> None:
        """Make a rename or unlink in the folder durable."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _derive_key(crypt_key: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(crypt_key))
