"""When to try again: ``Retry-After`` (seconds or HTTP-date) and exponential backoff with jitter.

The Bulk Data IG lets a server answer ``Retry-After`` in either form, and real
servers send long values (600 s; hours at some EHRs). Both are honoured as
given; an HTTP-date in the past means "now" (never a busy loop: the caller
still waits the backoff minimum). Without the header, the wait grows
exponentially with full jitter, so parallel clients do not poll in lockstep.
"""

from __future__ import annotations

import random

import orjson

from ..smart.retry_after import retry_after_seconds

#: Shortest wait between two polls, whatever the server says.
MIN_WAIT = 0.2


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, at least :data:`MIN_WAIT`; ``None`` if absent or unreadable."""
    seconds = retry_after_seconds(value, now)
    return None if seconds is None else max(MIN_WAIT, seconds)


class Backoff:
    """Exponential backoff with full jitter: ``uniform(MIN_WAIT, min(cap, base * 2**n))``."""

    def __init__(
        self, base: float = 1.0, cap: float = 120.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The next wait, growing with each call."""
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(MIN_WAIT, max(MIN_WAIT, ceiling))

    def reset(self) -> None:
        self.attempt = 0


def is_transient_outcome(body: bytes) -> bool:
    """True when ``body`` is an OperationOutcome whose issues are all ``transient`` (retry)."""
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return False
    issues = outcome.get("issue")
    if not isinstance(issues, list) or not issues:
        return False
    return all(
        isinstance(i, dict) and i.get("code") in ("transient", "throttled", "timeout")
        for i in issues
    )


def outcome_text(body: bytes, limit: int = 300) -> str:
    """The diagnostics of an OperationOutcome body, for error messages (cut, one line)."""
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in outcome.get("issue") or []:
        if isinstance(issue, dict):
            text = (
                issue.get("diagnostics")
                or (issue.get("details") or {}).get("text")
                or issue.get("code")
            )
            if isinstance(text, str):
                parts.append(text)
    return " ".join("; ".join(parts).split())[:limit]
