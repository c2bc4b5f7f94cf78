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
new grant) or an admin edits auth_state, that write wins, the kept state is
dropped, and its refresh token is revoked at the EHR (nothing would ever use
it, and it could mint access for weeks).

A hub killed before the database came back would lose what is kept in
memory, so each kept state is also written, encrypted, to local disk before
the refresh returns (:mod:`.spill`), and read back at start-up
(:meth:`UnsavedTokens.restore`), before the hub serves a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .spill import TokenSpill, digest

__all__ = ["UnsavedTokens"]


@dataclass
class _Unsaved:
    user: Any  # JupyterHub's User
    state: dict[str, Any]  # as the hub works on it (refresh token opened)
    base: str | None  # SHA-256 of the stored ciphertext the first unsaved refresh started from


class UnsavedTokens:
    """Per user, the newest refreshed auth_state not yet in the database (module docstring)."""

    def __init__(
        self,
        store: Callable[[Any, dict[str, Any]], Awaitable[None]],
        lock: Callable[[str], asyncio.Lock],
        log: logging.Logger,
        *,
        spill: TokenSpill | None = None,
        revoke: Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]] | None = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 10.0,
    ) -> None:
        #: Writes a state (sealing its refresh token) and commits; raises SQLAlchemyError.
        self._store = store
        #: The per-user lock held while a user's stored tokens change hands.
        self._lock = lock
        self.log = log
        #: Where kept states survive a killed hub (None: memory only).
        self.spill = spill
        #: Revokes a dropped state's refresh token at its EHR (``name``, state).
        self._revoke = revoke
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self._entries: dict[str, _Unsaved] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}
        self._spilled: set[str] = set()
        self._revoking: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> dict[str, Any] | None:
        """A copy of ``name``'s unsaved state, which is newer than the stored one; or None."""
        entry = self._entries.get(name)
        return dict(entry.state) if entry is not None else None

    def keep(self, name: str, user: Any, state: dict[str, Any], base: bytes | None) -> None:
        """Hold ``state`` for ``name`` (on disk too) and store it once the database answers.

        ``base``: the stored ciphertext the refresh read. A later refresh of
        the same user keeps the first base: the database still holds that.
        A failure to write the spill file is logged; the state is kept in
        memory all the same.
        """
        previous = self._entries.get(name)
        kept = _Unsaved(user, dict(state), previous.base if previous else digest(base))
        if self.spill is not None:
            try:
                self.spill.write(name, kept.state, kept.base)
                self._spilled.add(name)
            except OSError as exc:
                self.log.error(
                    "Could not write the unsaved SMART tokens of %s to %s (%s): a hub killed "
                    "before the database answers loses them",
                    name,
                    self.spill.directory,
                    type(exc).__name__,
                )
        self._entries[name] = kept
        self._start_retry(name)

    def restore(self, find_user: Callable[[str], Any]) -> list[str]:
        """Take back what a previous run of the hub left on disk; the usernames.

        Called at start-up, before the hub serves: a state read back here is
        newer than the database's and is used in its place until stored.
        ``find_user``: JupyterHub's User of a name, or None when there is none
        any more (then the refresh token is revoked and the file deleted).
        """
        if self.spill is None:
            return []
        restored = []
        for spilled in self.spill.read_all():
            user = find_user(spilled.name)
            self._spilled.add(spilled.name)
            if user is None:
                self.log.warning(
                    "Unsaved SMART tokens of %s, who is no longer on the hub: revoking them",
                    spilled.name,
                )
                self._drop_and_revoke(spilled.name, spilled.state)
                continue
            self._entries[spilled.name] = _Unsaved(user, spilled.state, spilled.base)
            self._start_retry(spilled.name)
            restored.append(spilled.name)
        if restored:
            self.log.warning(
                "Took back the unsaved SMART tokens of %d user(s) from %s; storing them",
                len(restored),
                self.spill.directory,
            )
        return restored

    def drop(self, name: str) -> None:
        """The database holds ``name``'s newest state now (or a write that replaced it)."""
        self._entries.pop(name, None)
        if name in self._spilled and self.spill is not None:
            self._spilled.discard(name)
            try:
                self.spill.remove(name)
            except OSError as exc:
                self.log.error(
                    "Could not delete the stored unsaved SMART tokens of %s (%s)",
                    name,
                    type(exc).__name__,
                )

    def _start_retry(self, name: str) -> None:
        if name not in self._retries:
            self._retries[name] = asyncio.get_running_loop().create_task(self._retry(name))

    def _drop_and_revoke(self, name: str, state: dict[str, Any]) -> None:
        """Drop a kept state the hub will never use, and revoke its refresh token."""
        self.drop(name)
        if self._revoke is None or not state.get("refresh_token"):
            return
        task = asyncio.get_running_loop().create_task(self._revoke(name, dict(state)))
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)

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
            if entry.base is not None and digest(stored) != entry.base:
                self.log.warning(
                    "The auth_state of %s changed while refreshed tokens waited for the database "
                    "(a new sign-in or an admin's change): keeping that, dropping the refresh "
                    "and revoking its refresh token",
                    name,
                )
                self._drop_and_revoke(name, entry.state)
                return True
            await self._store(entry.user, entry.state)
            self.drop(name)
        self.log.warning(
            "Stored the refreshed SMART tokens of %s kept while the database was down", name
        )
        return True
