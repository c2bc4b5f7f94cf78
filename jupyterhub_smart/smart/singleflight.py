"""At most one call in flight per key; concurrent callers share its result.

Refreshing a token twice at once is not just wasteful: with rotating refresh
tokens the second refresh presents a token the first one just spent, and many
servers then revoke the whole grant (RFC 9700 4.14). Discovery and JWKS
fetches use the same tool so that a burst of logins costs the EHR one request.

The shared work runs in its own task: a caller that gives up (cancelled, timed
out) does not cancel the work for the callers still waiting on it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Deduplicate concurrent async calls by key (within one event loop)."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        """Await ``factory()``, or the call already running for ``key``.

        Exceptions reach every waiter. Once the call completes the key is
        free again: the next caller starts a new call (results are not cached
        here; callers cache what they want to).
        """
        result: T = await asyncio.shield(self.start(key, factory))
        return result

    def start(self, key: str, factory: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The call running for ``key``, started now if there is none.

        Unlike :meth:`run`, the call is registered before this returns, so a
        caller that then waits in a task of its own (``asyncio.wait_for``) leaves
        no moment in which :meth:`in_flight` is False for a call it started.
        Await the result through ``asyncio.shield`` so that giving up does not
        cancel it for the other waiters.
        """
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(factory())
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._forget, key))
        return future

    def _forget(self, key: str, done: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # mark retrieved: no "exception never retrieved" noise

    def in_flight(self, key: str) -> bool:
        """True while a call for ``key`` is running."""
        return key in self._inflight
