"""``Retry-After`` (RFC 9110 section 10.2.3): how long a server asks us to wait.

One reading for every client in the package (notebook, Bulk Data, the token
API client), so that all of them agree on the two forms the header takes:
delta-seconds (ASCII digits only) and an HTTP-date. A date in the past means
"now"; a value that is neither form is ``None``, so callers fall back to their
own backoff instead of trusting a number they could not read.
"""

from __future__ import annotations

import time
from datetime import timezone
from email.utils import parsedate_to_datetime

__all__ = ["retry_after_seconds"]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait (``>= 0``) from a ``Retry-After`` value; ``None`` if absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        # An HTTP-date is always GMT; "-0000" parses without a zone.
        moment = moment.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)
