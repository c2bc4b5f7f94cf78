"""Prometheus metrics of the SMART side of the hub, served on JupyterHub's ``/hub/metrics``.

JupyterHub serves ``prometheus_client``'s default registry at ``/hub/metrics``
(behind the ``read:metrics`` scope unless ``JupyterHub.authenticate_prometheus``
is off), so the metrics here are registered there, once per process, when this
module is imported. Labels never carry a username, a patient or any other id
that grows with use: outcomes and HTTP status codes are small fixed sets, and the
issuer label only ever takes a *configured* issuer (discovery runs only for
issuers on the allow-list), so every label's values are bounded by
configuration.

What the hub's own objects know (the audit log's backlog, what the sinks have not delivered)
is read at scrape time by :class:`AuditCollector`, which holds the trail weakly.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "AUDIT_WRITE_SECONDS",
    "DISCOVERY_FAILURES",
    "LOGINS",
    "REFRESHES",
    "TOKEN_API_SECONDS",
    "AuditCollector",
    "login_outcome",
    "markdown_table",
    "watch_audit",
]

LOGINS = Counter(
    "jupyterhub_smart_logins",
    "SMART sign-ins finished at /hub/oauth_callback, by outcome: success, refused (the EHR "
    "or the hub's user policy said no), failed (bad or expired request, EHR error), "
    "unavailable (EHR, audit trail or capacity), error (a bug: see the hub's log).",
    ["outcome"],
)
for _outcome in ("success", "refused", "failed", "unavailable", "error"):
    LOGINS.labels(_outcome)

REFRESHES = Counter(
    "jupyterhub_smart_refreshes",
    "Refreshes of EHR access tokens sent to an EHR, by outcome: success, "
    "reauthentication_required (the EHR ended the grant: the user signs in again), "
    "failed (EHR unreachable or erroring: the session is kept and retried), discarded "
    "(the user signed out or in again meanwhile).",
    ["outcome"],
)
for _outcome in ("success", "reauthentication_required", "failed", "discarded"):
    REFRESHES.labels(_outcome)

TOKEN_API_SECONDS = Histogram(
    "jupyterhub_smart_token_api_request_duration_seconds",
    "Time the hub took to answer GET /hub/api/smart/token, by HTTP status code.",
    ["code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

AUDIT_WRITE_SECONDS = Histogram(
    "jupyterhub_smart_audit_write_duration_seconds",
    "Time from handing a hub event to the audit log until it is on disk (fsynced) or "
    "refused; what a sign-in or a token hand-out waits for.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

DISCOVERY_FAILURES = Counter(
    "jupyterhub_smart_discovery_failures",
    "Failed fetches of a configured EHR's SMART configuration, by issuer (a key of "
    "SMARTAuthenticator.issuers).",
    ["issuer"],
)


def login_outcome(status: int) -> str:
    """The ``outcome`` label of a finished callback, from its HTTP status."""
    if status in (301, 302, 303, 307, 308):
        return "success"
    if status in (401, 403):
        return "refused"
    if status in (429, 502, 503, 504):
        return "unavailable"
    if status >= 500:
        return "error"
    return "failed"


#: Gauges :class:`AuditCollector` reports, with their help text.
AUDIT_GAUGES = {
    "jupyterhub_smart_audit_log_writable": "1 while the audit log accepts writes, 0 while it "
    "fails closed (sign-ins and tokens refused; see the hub's log).",
    "jupyterhub_smart_audit_backlog_events": "Audit events waiting to be written: queued, or "
    "held in memory while the log's disk fails.",
    "jupyterhub_smart_audit_sink_spool_bytes": "Bytes of audit records in spool files for the "
    "audit sinks (left by an earlier version, or a sink used without a log), not delivered yet.",
    "jupyterhub_smart_audit_sink_pending_events": "Audit records the sinks (a FHIR server, a "
    "SIEM over syslog) have not delivered yet, summed over sinks; grows while a receiver is "
    "unreachable (the sinks read them from the log after their cursor).",
}


class AuditCollector(Collector):
    """Audit log state read at scrape time: writable, events held in memory, sinks' spools.

    Spool sizes are in bytes, from ``stat`` (cheap however long an outage of the
    sink's server has lasted; counting records would read every spooled line).
    """

    def __init__(self) -> None:
        self._trail: weakref.ref[Any] | None = None

    def watch(self, trail: Any) -> None:
        """Report on this :class:`.trail.HubTrail` (the hub's one; a newer one replaces it)."""
        self._trail = weakref.ref(trail)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        trail = self._trail() if self._trail is not None else None
        log = getattr(trail, "opened_log", None)
        if log is None:  # not opened yet: nothing was recorded, nothing is held
            return
        spooled = pending = 0
        for sink in log.sinks:
            spool = getattr(sink, "spool", None)
            if isinstance(spool, Path):
                spooled += _spool_bytes(spool)
            if getattr(sink, "delivered_seq", lambda: None)() is not None:
                pending += sink.pending()  # the log's head less the sink's cursor: no reading
        values = {
            "jupyterhub_smart_audit_log_writable": 1 if log.healthy else 0,
            "jupyterhub_smart_audit_backlog_events": log.backlog,
            "jupyterhub_smart_audit_sink_spool_bytes": spooled,
            "jupyterhub_smart_audit_sink_pending_events": pending,
        }
        for name, help_text in AUDIT_GAUGES.items():
            yield GaugeMetricFamily(name, help_text, value=values[name])


def _spool_bytes(spool: Path) -> int:
    total = 0
    try:
        entries = list(spool.glob("*.jsonl"))
    except OSError:
        return 0
    for path in entries:
        try:
            total += path.stat().st_size
        except OSError:  # delivered and deleted meanwhile
            continue
    return total


_AUDIT = AuditCollector()
REGISTRY.register(_AUDIT)


def watch_audit(trail: Any) -> None:
    """Report the audit state of ``trail`` on ``/hub/metrics``."""
    _AUDIT.watch(trail)


def markdown_table() -> str:
    """The metrics as a Markdown table (docs/production.md is built with it)."""
    rows = ["| Metric | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for metric in (LOGINS, REFRESHES, TOKEN_API_SECONDS, AUDIT_WRITE_SECONDS, DISCOVERY_FAILURES):
        [family] = metric.describe()
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "none"
        if family.type == "counter":
            name = f"`{family.name}_total`"
        else:  # a histogram: _bucket (with le), _sum and _count
            name = f"`{family.name}_bucket`, `_sum`, `_count`"
        rows.append(f"| {name} | {family.type} | {labels} | {family.documentation} |")
    for gauge, help_text in AUDIT_GAUGES.items():
        rows.append(f"| `{gauge}` | gauge | none | {help_text} |")
    return "\n".join(rows)
