"""Refreshed tokens the hub database did not take: kept in memory and stored when it answers.

An EHR that rotates refresh tokens (most do; the sandbox does) spends the old
refresh token the moment it answers a refresh. If the hub then cannot store
the answer because its database is down, dropping it would leave only the
spent token in the database: the next refresh would present it, and the EHR
would take that as a stolen token and revoke the whole grant (RFC 9700 4.14),
signing the user out of their EHR session. So the refreshed auth_state is kept
here, used in place of the stored one (:meth:`UnsavedTokens.get`), and written
as soon as the database accepts it.

What the database holds may change meanwhile: if the user signs in again (a
new grant) or an admin edits auth_state, that write wins and the kept state is
dropped. A hub killed before the database came back loses the kept state
(nothing secret is written anywhere else); the user then signs in again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

__all__ = ["UnsavedTokens"]


@dataclass
class _Unsaved:
    user: Any  # JupyterHub's User
    state: dict[str, Any]  # as the hub works on it (refresh token opened)
    base: bytes | None  # the stored ciphertext the first unsaved refresh started from


class UnsavedTokens:
    """Per user, the newest refreshed auth_state not yet in the database (module docstring)."""

    def __init__(
        self,
        store: Callable[[Any, dict[str, Any]], Awaitable[None]],
        lock: Callable[[str], asyncio.Lock],
        log: logging.Logger,
        *,
        retry_interval: float = 1.0,
        max_retry_interval: float = 10.0,
    ) -> None:
        #: Writes a state (sealing its refresh token) and commits; raises SQLAlchemyError.
        self._store = store
        #: The per-user lock held while a user's stored tokens change hands.
        self._lock = lock
        self.log = log
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self._entries: dict[str, _Unsaved] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> dict[str, Any] | None:
        """A copy of ``name``'s unsaved state, which is newer than the stored one; or None."""
        entry = self._entries.get(name)
        return dict(entry.state) if entry is not None else None

    def keep(self, name: str, user: Any, state: dict[str, Any], base: bytes | None) -> None:
        """Hold ``state`` for ``name`` and store it once the database answers.

        ``base``: the stored ciphertext the refresh read. A later refresh of
        the same user keeps the first base: the database still holds that.
        """
        previous = self._entries.get(name)
        if previous is not None:
            base = previous.base
        self._entries[name] = _Unsaved(user, dict(state), base)
        if name not in self._retries:
            self._retries[name] = asyncio.get_running_loop().create_task(self._retry(name))

    def drop(self, name: str) -> None:
        """The database holds ``name``'s newest state now (or a write that replaced it)."""
        self._entries.pop(name, None)

    async def _retry(self, name: str) -> None:
        """Store ``name``'s state, retrying with back-off until the database takes it."""
        delay = self.retry_interval
        try:
            while name in self._entries:
                await asyncio.sleep(delay)
                try:
                    if await self._store_once(name):
                        return
                except SQLAlchemyError:
                    entry = self._entries.get(name)
                    if entry is not None:
                        entry.user.db.rollback()
                delay = min(delay * 2, self.max_retry_interval)
        finally:
            self._retries.pop(name, None)

    async def _store_once(self, name: str) -> bool:
        """One attempt; True when nothing is left to store for ``name``."""
        async with self._lock(name):
            entry = self._entries.get(name)
            if entry is None:
                return True  # stored meanwhile by a refresh or a logout
            stored = entry.user.encrypted_auth_state  # reads the database after a rollback
            if entry.base is not None and stored != entry.base:
                self.log.warning(
                    "The auth_state of %s changed while refreshed tokens waited for the database "
                    "(a new sign-in or an admin's change): keeping that, dropping the refresh",
                    name,
                )
                self.drop(name)
                return True
            await self._store(entry.user, entry.state)
            self.drop(name)
        self.log.warning(
            "Stored the refreshed SMART tokens of %s kept while the database was down", name
        )
        return True
