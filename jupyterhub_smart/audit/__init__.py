"""jupyterhub_smart.audit: a tamper-evident, crash-safe audit trail.

``AuditLog`` is the durable hash-chained writer (one per hub process);
``hub_event`` builds the FHIR-AuditEvent-shaped record of something the hub
did. ``build_sinks(c.audit_sinks, spool_root)`` turns the ``audit_sinks``
setting into sinks to pass as ``AuditLog(path, sinks=...)``. See
``docs/audit.md`` for the format and what it guarantees.
"""

from __future__ import annotations

from .events import (
    FAIL_CLOSED_ACTIONS,
    data_access_event,
    hub_event,
    sanitize,
    token_fingerprint,
)
from .log import AuditBacklogFull, AuditLog, AuditUnavailable
from .policy import record_or_refuse
from .sinks import FHIRSink, build_sinks
from .syslog import SyslogSink

__all__ = [
    "FAIL_CLOSED_ACTIONS",
    "AuditBacklogFull",
    "AuditLog",
    "AuditUnavailable",
    "FHIRSink",
    "SyslogSink",
    "build_sinks",
    "data_access_event",
    "hub_event",
    "record_or_refuse",
    "sanitize",
    "token_fingerprint",
]
