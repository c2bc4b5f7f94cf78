"""A cap on the audit records unauthenticated requests can cause, without losing any.

Anyone can send ``GET /hub/oauth_login?iss=...`` or a bogus callback, and each
one is worth an audit record (``launch-received``, ``issuer-refused``,
``login-failed``). Recorded one by one, a flood writes fsynced records as fast
as it sends, fills the disk, and the fail-closed trail then refuses every
sign-in and token. :class:`AuditBudget` keeps the record but not the volume:

* per window (``window`` seconds), each (action, client address) gets
  ``per_source`` records written as they are; the hub as a whole gets
  ``total`` such records;
* beyond that, requests are only *counted*, per (action, client address), and
  when the window ends one summary record per (action, address) says how many
  were not written one by one, between when and when (at most
  ``max_summaries`` addresses per window get their own summary; the rest are
  summed in one record naming how many addresses);
* the counts live in memory only until the next flush, bounded by
  ``max_summaries`` entries.

So a flood costs at most ``total + 2 * max_summaries`` records per window
whatever its rate, and every request is in the trail, alone or in a count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AuditBudget", "Summary"]


@dataclass
class Summary:
    """Requests of one action counted (not written) from one address, or from many."""

    action: str
    client: str | None  # None: the addresses beyond max_summaries, summed
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    outcome: str = "success"
    sources: set[str] = field(default_factory=set)

    def description(self, window: float) -> str:
        what = (
            f"from {self.client}"
            if self.client is not None
            else f"from {len(self.sources)} other client addresses"
        )
        span = (
            f"between {time.strftime('%H:%M:%S', time.gmtime(self.first))} and "
            f"{time.strftime('%H:%M:%S', time.gmtime(self.last))} UTC"
        )
        return (
            f"aggregated: {self.count} more unauthenticated {self.action} requests {what} "
            f"{span}, counted and not recorded one by one (over the audit budget of the "
            f"{window:.0f} s window)"
        )


class AuditBudget:
    """Decides, per unauthenticated request, whether its record is written or counted."""

    def __init__(
        self,
        *,
        window: float = 60.0,
        per_source: int = 10,
        total: int = 100,
        max_summaries: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.per_source = per_source
        self.total = total
        self.max_summaries = max_summaries
        self._clock = clock
        self._window_start = clock()
        self._written: dict[tuple[str, str], int] = {}
        self._written_total = 0
        self._counted: dict[tuple[str, str], Summary] = {}
        self._overflow: dict[str, Summary] = {}

    def admit(self, action: str, client: str, outcome: str = "success") -> bool:
        """True: write this request's record now. False: it was counted for a summary."""
        now = self._clock()
        key = (action, client)
        written = self._written.get(key, 0)
        if written < self.per_source and self._written_total < self.total:
            if len(self._written) < self.max_summaries or key in self._written:
                self._written[key] = written + 1
            self._written_total += 1
            return True
        summary = self._counted.get(key)
        if summary is None:
            if len(self._counted) < self.max_summaries:
                summary = self._counted[key] = Summary(action, client, first=now)
            else:
                summary = self._overflow.get(action)
                if summary is None:
                    summary = self._overflow[action] = Summary(action, None, first=now)
                if len(summary.sources) < self.max_summaries:
                    summary.sources.add(client)
        summary.count += 1
        summary.last = now
        summary.outcome = outcome
        return False

    def due(self) -> bool:
        """True when the window has ended (time to :meth:`drain`)."""
        return self._clock() - self._window_start >= self.window

    def drain(self) -> list[Summary]:
        """End the window: the summaries to write, and a fresh budget."""
        summaries = [*self._counted.values(), *self._overflow.values()]
        self._window_start = self._clock()
        self._written.clear()
        self._written_total = 0
        self._counted = {}
        self._overflow = {}
        return summaries
