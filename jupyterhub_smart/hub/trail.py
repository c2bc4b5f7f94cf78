"""The hub's side of the audit trail: one log, events built from keyword fields.

Every hub component records through :class:`HubTrail`, so that two rules hold
everywhere: an event that grants access (a login, a token handed out) is
refused when the trail cannot take it (fail closed, :class:`AuditUnavailable`
propagates), and any other failure to record is logged and swallowed (the
trail must not take the hub down). Tokens appear only as salted fingerprints.
Records caused by unauthenticated requests go through an :class:`.AuditBudget`
(:meth:`HubTrail.unauthenticated`), so that a flood is counted, not written
one record per request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..audit import AuditLog, AuditUnavailable, hub_event, record_or_refuse, token_fingerprint
from .audit_budget import AuditBudget
from .clients import client_address
from .metrics import AUDIT_WRITE_SECONDS

__all__ = ["HubTrail", "client_fields", "reference"]

#: Characters of a User-Agent header kept in an event.
_MAX_USER_AGENT = 200


class HubTrail:
    """Opens the hub's AuditLog on first use and records hub events in it."""

    def __init__(
        self,
        open_log: Callable[[], AuditLog],
        log: logging.Logger,
        budget: AuditBudget | None = None,
    ) -> None:
        self._open_log = open_log
        self.budget = budget or AuditBudget()
        self._flusher: asyncio.Task[None] | None = None
        self._audit_log: AuditLog | None = None
        self.log = log
        #: Per-process salt for token fingerprints (never written anywhere).
        self._fingerprint_salt = secrets.token_bytes(32)

    @property
    def audit_log(self) -> AuditLog:
        """The hub's one AuditLog (also what POST /hub/api/smart/audit writes to)."""
        if self._audit_log is None:
            self._audit_log = self._open_log()
        return self._audit_log

    @property
    def opened_log(self) -> AuditLog | None:
        """The AuditLog if something opened it already (health and metrics never open it)."""
        return self._audit_log

    async def record(self, event: Mapping[str, Any]) -> None:
        """Record an event; raises AuditUnavailable only for access-granting events."""
        began = time.perf_counter()
        try:
            await record_or_refuse(self.audit_log, event)
        finally:
            AUDIT_WRITE_SECONDS.observe(time.perf_counter() - began)

    async def event(self, action: str, **fields: Any) -> None:
        """Build and record a hub event; a bad field is logged, never raised at the user."""
        try:
            event = hub_event(action, **fields)
        except (ValueError, TypeError) as exc:
            self.log.error("Could not build audit event %s: %s", action, exc)
            return
        try:
            await self.record(event)
        except AuditUnavailable:
            raise
        except Exception as exc:  # the trail must not take the hub down
            self.log.error("Could not record audit event %s: %s", action, type(exc).__name__)

    async def unauthenticated(self, action: str, request: Any, **fields: Any) -> None:
        """Record what an unauthenticated request caused, within the audit budget.

        Over the budget the request is counted, and the count is recorded when
        the window ends (:mod:`.audit_budget`).
        """
        client = client_fields(request)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        outcome = str(fields.get("outcome", "success"))
        if self.budget.admit(action, client.get("client_address") or "unknown", outcome):
            await self.event(action, **client, **fields)

    async def flush(self) -> None:
        """Record the counts of the window that ended."""
        for summary in self.budget.drain():
            await self.event(
                summary.action,
                outcome=summary.outcome,
                description=summary.description(self.budget.window),
                client_address=summary.client,
            )

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.budget.window)
            try:
                await self.flush()
            except Exception as exc:  # the next window tries again
                self.log.error("Could not record the audit counts: %s", type(exc).__name__)

    def token_hash(self, token: str) -> str:
        """The salted fingerprint of a token, to correlate its hand-out with its use."""
        return token_fingerprint(token, self._fingerprint_salt)


def client_fields(request: Any) -> dict[str, Any]:
    """The client address and (clipped) User-Agent of a tornado request, for an event."""
    if request is None:
        return {}
    return {
        "client_address": client_address(request),
        "user_agent": (request.headers.get("User-Agent") or "")[:_MAX_USER_AGENT] or None,
    }


def reference(rtype: str, value: object) -> str | None:
    """``Type/id`` for an id kept in auth_state (``patient``, ``encounter``), else None."""
    return f"{rtype}/{value}" if isinstance(value, str) and value else None
