"""Whether the hub's database answers, as the token API and the refresh path find out.

JupyterHub keeps users, API tokens and auth_state in one SQLAlchemy session.
When the database (PostgreSQL in production) stops answering, every query
raises a :class:`~sqlalchemy.exc.SQLAlchemyError`; JupyterHub rolls its
session back and the next query reconnects (its pool pings connections before
use), so the hub recovers by itself once the database is back. What this
module adds:

* :class:`DatabaseHealth` remembers an outage, so that the audit trail gets one
  ``database-unavailable`` record when it starts and one
  ``database-recovered`` record (with its length) when it ends, not one per
  request, and so that a readiness probe can report it (:meth:`probe`);
* :data:`RETRY_AFTER`, what the token API tells callers to wait (503).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .trail import HubTrail

__all__ = ["RETRY_AFTER", "DatabaseHealth", "SQLAlchemyError"]

#: Seconds a caller of the token API waits before asking again while the database is down.
RETRY_AFTER = 5


class DatabaseHealth:
    """The hub database's availability, with its outages on the audit trail (module docstring)."""

    def __init__(self, trail: HubTrail, log: logging.Logger) -> None:
        self.trail = trail
        self.log = log
        #: time.monotonic() of the first failure of the current outage; None while available.
        self.down_since: float | None = None
        #: The class name of the error that started the current outage (no message: it
        #: may name the database's host and user).
        self.last_error: str | None = None

    @property
    def available(self) -> bool:
        """False from a failed query until a query succeeds again."""
        return self.down_since is None

    async def failed(self, exc: BaseException) -> None:
        """A query failed: the first failure of an outage is logged and recorded."""
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.last_error = type(exc).__name__
        self.log.error("The hub database is unavailable (%s): answering 503", self.last_error)
        await self.trail.event(
            "database-unavailable",
            outcome="failure",
            description=f"the hub database did not answer ({self.last_error}); "
            "the token API answers 503 until it does",
        )

    async def succeeded(self) -> None:
        """A query succeeded: an outage in progress ends (logged and recorded)."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        self.down_since = None
        self.log.warning("The hub database answers again after %.0f s", lasted)
        await self.trail.event(
            "database-recovered",
            description=f"the hub database answers again after {lasted:.0f} s "
            f"(unavailable: {self.last_error})",
        )

    async def probe(self, db: Any) -> bool:
        """Ask the database (``SELECT 1`` on JupyterHub's session) and note the answer.

        For a readiness check: True when it answered. A failed session is
        rolled back, as JupyterHub does, so the next query reconnects.
        """
        try:
            db.execute(text("SELECT 1"))
            db.commit()
        except SQLAlchemyError as exc:
            db.rollback()
            await self.failed(exc)
            return False
        await self.succeeded()
        return True
