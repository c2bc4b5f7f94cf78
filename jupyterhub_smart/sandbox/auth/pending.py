"""Interactive authorizations in progress (sign-in, patient picker, consent).

Between the authorize request and the user's decision the validated request
waits here, in memory, under a random id that is also recorded in the
browser's session cookie: another browser holding only the id cannot finish
it. Unfinished requests are forgotten after a few minutes.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from .context import LaunchContext

#: Most interactive authorizations kept at once; the oldest is dropped first.
MAX_PENDING = 10_000


@dataclass
class PendingAuthorization:
    """A validated authorize request waiting for the user."""

    id: str
    #: The authorize request's parameters (each given once; duplicates were refused).
    params: dict[str, str]
    client_id: str
    redirect_uri: str
    #: Scopes the client may be granted, in request order (before consent).
    grantable: list[str]
    launch: LaunchContext | None
    created: float
    #: Relative reference of the signed-in person, once known.
    user: str | None = None
    patient: str | None = None
    #: ``prompt=login``: the browser's earlier sign-in does not count.
    force_login: bool = False


class PendingStore:
    """Thread-safe in-memory map of pending authorizations with expiry."""

    def __init__(self, lifetime: float) -> None:
        self._lifetime = lifetime
        self._items: dict[str, PendingAuthorization] = {}
        self._lock = threading.Lock()

    def new_id(self) -> str:
        return secrets.token_urlsafe(18)

    def put(self, item: PendingAuthorization) -> None:
        now = time.time()
        with self._lock:
            for key in [k for k, v in self._items.items() if now - v.created > self._lifetime]:
                del self._items[key]
            while len(self._items) >= MAX_PENDING:  # a flood of requests cannot exhaust memory
                del self._items[next(iter(self._items))]
            self._items[item.id] = item

    def get(self, item_id: str) -> PendingAuthorization | None:
        with self._lock:
            item = self._items.get(item_id)
        if item is None or time.time() - item.created > self._lifetime:
            return None
        return item

    def pop(self, item_id: str) -> PendingAuthorization | None:
        with self._lock:
            return self._items.pop(item_id, None)
