"""What the hub does when the audit trail cannot be written: fail closed for access.

A hospital would rather refuse a login than give access nobody can account
for. So when the log is unavailable, events that *grant* access
(:data:`~.events.FAIL_CLOSED_ACTIONS`) raise and the hub refuses the access,
while events about refusals, failures and logouts are held by the log (written
later, marked ``deferred``) and the hub carries on: refusing a logout because
the disk is full would help nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .events import FAIL_CLOSED_ACTIONS, action_of
from .log import AuditLog, AuditUnavailable

log = logging.getLogger(__name__)


async def record_or_refuse(audit_log: AuditLog, event: Mapping[str, Any]) -> int | None:
    """Record ``event``; its ``seq``, or ``None`` if held for later.

    Raises :class:`AuditUnavailable` when the event grants access and could
    not be made durable: the caller must then refuse that access (HTTP 503).
    """
    try:
        return await audit_log.record(event)
    except AuditUnavailable:
        action = action_of(event)
        if action in FAIL_CLOSED_ACTIONS:
            log.error("Audit trail unavailable: refusing %s (fail closed)", action)
            raise
        log.error("Audit trail unavailable: %s event held in memory, carrying on", action)
        return None
