"""Back-off of refreshes while an EHR fails: one attempt per period, not one per call.

When an EHR's token endpoint is down, every token API call whose token
needs a refresh would otherwise ask it again, and write a fsynced
``refresh-failed`` record each time (50 calls, 50 attempts, 50 records).
After a failed refresh the hub waits before it asks that EHR again:

* the wait doubles with each failure in a row, from ``initial`` up to
  ``maximum`` seconds, and a successful refresh ends it;
* an outage (no answer, a timeout, a 5xx, ``server_error`` or
  ``temporarily_unavailable``) holds back the whole issuer, since every user
  of that EHR would meet it; any other failure (the EHR refused this user's
  request in a way that does not end the grant) holds back that user alone;
* calls within the wait are answered at once (503 with ``Retry-After`` when
  no valid token is left) and counted; the count becomes one audit record per
  period (:meth:`RefreshBackoff.close`), so an outage costs one record per
  attempt and one per period, whatever the call rate.

Kept in memory: a restarted hub asks again at once, which is what a restart
is for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..smart.errors import DiscoveryError, SMARTError, TokenEndpointError

__all__ = ["BackoffPeriod", "RefreshBackoff", "is_outage"]

#: OAuth errors a token endpoint sends when it, not the request, is at fault (RFC 6749 5.2 and
#: the authorization endpoint's list, which some servers reuse).
_OUTAGE_ERRORS = frozenset({"server_error", "temporarily_unavailable"})


def is_outage(exc: SMARTError) -> bool:
    """True when ``exc`` says the EHR is unavailable, not that it refused this user."""
    if isinstance(exc, DiscoveryError):
        return True
    if isinstance(exc, TokenEndpointError):
        return exc.oauth_error is None or exc.oauth_error in _OUTAGE_ERRORS
    return exc.status >= 500


@dataclass
class BackoffPeriod:
    """One wait after a failure: how long, why, and how many calls it turned away."""

    failures: int  #: failed refreshes in a row, this one included
    delay: float  #: seconds of this wait
    until: float  #: clock reading at which the next attempt may go out
    reason: str  #: the failure, in words safe to log
    refused: int = 0  #: calls answered without asking the EHR (not yet recorded)


class RefreshBackoff:
    """Per-key (issuer, or issuer and user) exponential back-off (module docstring)."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10000,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("back-off needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._clock = clock
        self._max_keys = max_keys
        self._periods: dict[str, BackoffPeriod] = {}

    def waiting(self, key: str) -> BackoffPeriod | None:
        """The period ``key`` is waiting out now (the call is counted), or None: ask the EHR."""
        period = self._periods.get(key)
        if period is None or self._clock() >= period.until:
            return None
        period.refused += 1
        return period

    def retry_after(self, period: BackoffPeriod) -> int:
        """Whole seconds until ``period`` ends (at least 1), for ``Retry-After``."""
        return max(1, math.ceil(period.until - self._clock()))

    def failed(self, key: str, reason: str) -> tuple[BackoffPeriod, BackoffPeriod | None]:
        """Start the next, longer period for ``key`` after a failed attempt.

        Returns it and the period before it (whose count the caller records).
        """
        last = self._periods.get(key)
        failures = (last.failures if last else 0) + 1
        delay = min(self.maximum, self.initial * 2 ** min(failures - 1, 60))
        period = BackoffPeriod(failures, delay, self._clock() + delay, reason)
        self._periods[key] = period
        while len(self._periods) > self._max_keys:
            self._periods.pop(next(iter(self._periods)))
        return period, last

    def succeeded(self, key: str) -> BackoffPeriod | None:
        """End ``key``'s back-off; returns the last period (whose count the caller records)."""
        return self._periods.pop(key, None)

    @staticmethod
    def close(period: BackoffPeriod | None) -> int:
        """Take the count of calls ``period`` turned away (0 once taken), to record it once."""
        if period is None:
            return 0
        refused, period.refused = period.refused, 0
        return refused
