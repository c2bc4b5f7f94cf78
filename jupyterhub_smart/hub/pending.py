"""Pending logins: what the hub must remember between the authorize redirect and the callback.

OAuthenticator keeps one signed (not encrypted) state cookie per browser, so a
second launch in another tab overwrites the first and the PKCE verifier travels
in the clear. Here each login gets its own record, kept server-side and keyed
by its ``state``:

* single use: :meth:`PendingLogins.take` removes the record, so a replayed
  callback finds nothing;
* bounded and short-lived: records live ``ttl`` seconds (10 minutes by
  default); at most ``max_per_client`` at once per client address and
  ``max_entries`` in all. Beyond a bound a new sign-in is *refused*
  (:class:`PendingLoginsFull`), never an older one dropped: a flood cannot
  evict a real user's sign-in that is waiting on the EHR's consent page, and
  one address cannot take the whole store;
* bound to the browser: the record holds a hash of a random value that lives
  in the browser's (signed, HttpOnly) binding cookie; a callback from a
  browser without that cookie is refused even with a valid ``state``
  (login CSRF / session fixation through a stolen authorization response).

The store is per hub process, which is what JupyterHub is (one hub process).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import PendingLoginError, PendingLoginsFull

__all__ = ["PendingLogin", "PendingLogins", "binding_hash"]


def binding_hash(binding: str) -> str:
    """The hash of a browser-binding value kept in a record (never the value itself)."""
    return hashlib.sha256(binding.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PendingLogin:
    """One authorization request in flight."""

    issuer: str
    launch: str | None
    code_verifier: str = field(repr=False)
    nonce: str | None = field(repr=False)
    next_url: str
    scope: tuple[str, ...]
    browser: str = field(repr=False)  # binding_hash(binding cookie value)
    created: float = 0.0
    client: str = ""  # the client address that started it (see .clients.client_address)


class PendingLogins:
    """In-memory, bounded, expiring, single-use store of :class:`PendingLogin`."""

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_entries: int = 10_000,
        max_per_client: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_per_client = max_per_client
        self._clock = clock
        self._items: OrderedDict[str, PendingLogin] = OrderedDict()
        self._per_client: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def pending_for(self, client: str) -> int:
        """Records in flight for one client address."""
        return self._per_client.get(client, 0)

    def _drop(self, login: PendingLogin) -> None:
        left = self._per_client.get(login.client, 0) - 1
        if left > 0:
            self._per_client[login.client] = left
        else:
            self._per_client.pop(login.client, None)

    def _purge(self, now: float) -> None:
        """Drop expired records (they are in creation order)."""
        while self._items:
            first = next(iter(self._items.values()))
            if now - first.created <= self.ttl:
                break
            self._items.popitem(last=False)
            self._drop(first)

    def put(self, state: str, login: PendingLogin, client: str = "") -> PendingLogin:
        """Remember ``login`` under ``state`` for ``client`` (stamped with the store's clock).

        Raises :class:`PendingLoginsFull` when the client or the store is at its bound.
        """
        now = self._clock()
        self._purge(now)
        if self._per_client.get(client, 0) >= self.max_per_client:
            raise PendingLoginsFull(
                "Too many sign-ins are in progress from your network address. Finish or "
                "abandon one, then try again in a few minutes.",
                status=429,
                retry_after=self._retry_after(now),
            )
        if len(self._items) >= self.max_entries:
            raise PendingLoginsFull(
                "The hub has too many sign-ins in progress right now. Try again in a few minutes.",
                status=503,
                retry_after=self._retry_after(now),
            )
        stamped = PendingLogin(
            issuer=login.issuer,
            launch=login.launch,
            code_verifier=login.code_verifier,
            nonce=login.nonce,
            next_url=login.next_url,
            scope=login.scope,
            browser=login.browser,
            created=now,
            client=client,
        )
        self._items[state] = stamped
        self._per_client[client] = self._per_client.get(client, 0) + 1
        return stamped

    def _retry_after(self, now: float) -> int:
        """Seconds until the oldest record expires (when room is certain to appear)."""
        if not self._items:
            return 1
        first = next(iter(self._items.values()))
        return max(1, int(self.ttl - (now - first.created)) + 1)

    def take(self, state: str, browser_binding: str | None) -> PendingLogin:
        """Remove and return the login for ``state`` if this browser started it.

        Raises :class:`PendingLoginError` (with a message fit for the page)
        when the state is unknown, used, expired, or from another browser.
        """
        login = self._items.pop(state, None)
        if login is not None:
            self._drop(login)
        if login is None:
            raise PendingLoginError(
                "This sign-in link is unknown, was already used, or has expired "
                "(state not found). Launch the app again from the EHR."
            )
        if self._clock() - login.created > self.ttl:
            raise PendingLoginError(
                "This sign-in took too long and has expired. Launch the app again from the EHR."
            )
        if not browser_binding or not hmac.compare_digest(
            login.browser, binding_hash(browser_binding)
        ):
            raise PendingLoginError(
                "This sign-in was started in another browser (or its cookies were lost). "
                "Launch the app again from the EHR in this browser."
            )
        return login
