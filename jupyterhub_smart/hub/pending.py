"""Pending logins: what the hub must remember between the authorize redirect and the callback.

OAuthenticator keeps one signed (not encrypted) state cookie per browser, so a
second launch in another tab overwrites the first and the PKCE verifier travels
in the clear. Here each login gets its own record, kept server-side and keyed
by its ``state``:

* single use: :meth:`PendingLogins.take` removes the record, so a replayed
  callback finds nothing;
* bounded and short-lived: at most ``max_entries`` records for ``ttl`` seconds
  (10 minutes by default), the oldest dropped first, so a flood of login
  requests cannot grow memory without bound;
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

from .errors import PendingLoginError

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


class PendingLogins:
    """In-memory, bounded, expiring, single-use store of :class:`PendingLogin`."""

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, PendingLogin] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _purge(self, now: float) -> None:
        while self._items:
            first = next(iter(self._items.values()))
            if now - first.created <= self.ttl and len(self._items) < self.max_entries:
                break
            self._items.popitem(last=False)

    def put(self, state: str, login: PendingLogin) -> PendingLogin:
        """Remember ``login`` under ``state`` (stamped with the store's clock)."""
        now = self._clock()
        self._purge(now)
        stamped = PendingLogin(
            issuer=login.issuer,
            launch=login.launch,
            code_verifier=login.code_verifier,
            nonce=login.nonce,
            next_url=login.next_url,
            scope=login.scope,
            browser=login.browser,
            created=now,
        )
        self._items[state] = stamped
        return stamped

    def take(self, state: str, browser_binding: str | None) -> PendingLogin:
        """Remove and return the login for ``state`` if this browser started it.

        Raises :class:`PendingLoginError` (with a message fit for the page)
        when the state is unknown, used, expired, or from another browser.
        """
        login = self._items.pop(state, None)
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
