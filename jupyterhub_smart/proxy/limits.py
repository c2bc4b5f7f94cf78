"""Per-user fairness: requests in flight and requests per second, answered 429 beyond.

One notebook paging as fast as it can must not starve the others (nor get the
hub's EHR client throttled for everyone). Each user has a concurrency count
and a token bucket (``rate`` per second, ``burst`` deep). A refused request
gets ``Retry-After``: the seconds until the bucket holds a token again, or 1
when the user is at their concurrency limit. State lives in this process only;
users idle for a while are forgotten so the table stays small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import ProxyError

__all__ = ["UserLimits"]

_FORGET_AFTER = 600.0


@dataclass
class _State:
    tokens: float
    updated: float
    in_flight: int = 0
    seen: float = field(default_factory=time.monotonic)


class UserLimits:
    """Concurrency and rate limits per user name."""

    def __init__(self, *, max_concurrent: int, rate: float, burst: int) -> None:
        self.max_concurrent = max_concurrent
        self.rate = rate
        self.burst = burst
        self._users: dict[str, _State] = {}
        self._last_sweep = time.monotonic()

    def _state(self, user: str, now: float) -> _State:
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _State(tokens=float(self.burst), updated=now)
        else:
            state.tokens = min(self.burst, state.tokens + (now - state.updated) * self.rate)
            state.updated = now
        state.seen = now
        return state

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _FORGET_AFTER:
            return
        self._last_sweep = now
        for name in [
            n for n, s in self._users.items() if not s.in_flight and now - s.seen > _FORGET_AFTER
        ]:
            del self._users[name]

    @contextmanager
    def slot(self, user: str) -> Iterator[None]:
        """Hold one of ``user``'s request slots; :class:`ProxyError` 429 when none is free."""
        now = time.monotonic()
        self._sweep(now)
        state = self._state(user, now)
        if state.in_flight >= self.max_concurrent:
            raise ProxyError(
                429,
                "too_many_requests",
                f"At most {self.max_concurrent} FHIR requests of one user go through the proxy "
                "at once; wait for one to finish.",
                headers={"Retry-After": "1"},
                retry_after=1,
            )
        if state.tokens < 1.0:
            wait = max(1, math.ceil((1.0 - state.tokens) / self.rate))
            raise ProxyError(
                429,
                "rate_limited",
                f"More than {self.rate:g} FHIR requests per second (bursts of {self.burst}) "
                "from one user; slow down.",
                headers={"Retry-After": str(wait)},
                retry_after=wait,
            )
        state.tokens -= 1.0
        state.in_flight += 1
        try:
            yield
        finally:
            state.in_flight -= 1
