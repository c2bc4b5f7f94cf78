"""Data-access events: the seam where a notebook's reads reach the audit trail.

The client calls an optional *event sink* after each FHIR request it makes on
the researcher's behalf. In a jupyterhub-smart single-user server,
``connect()`` uses the hub's reporter by default
(:class:`jupyterhub_smart.audit.reporter.HubAuditReporter`, see
:mod:`.reporting`), which POSTs batches to ``{hub}/hub/api/smart/audit``.

A sink must return at once (queue and send off the hot path) and be
thread-safe: search pages are fetched one ahead in a worker thread, which
calls the sink for the pages it fetched. A sink that raises is logged and
ignored: an audit hiccup must not break an analysis, and a sink that must fail
closed can do so by its own policy. A sink with a ``flush()`` method is
flushed when the client is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DataAccessEvent", "EventSink", "emit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataAccessEvent:
    """One FHIR request: what was asked, of which server, about which patient, and what came back.

    Never holds a token. ``params`` are the search's parameters (also on the
    events of its ``next`` pages, whose ``url`` is the server's link);
    ``count`` is the number of resources on the page (1 for a read, 0 for a
    ``_summary=count``). ``patient`` is the patient the request is about: the
    one a read or a search names, else the launched patient, and None for a
    search naming several.
    """

    action: str  # "read", "search" (one per page) or "count"
    resource_type: str
    fhir_base_url: str
    url: str
    status: int
    count: int
    patient: str | None = None
    resource_id: str | None = None
    params: tuple[tuple[str, str], ...] = ()


EventSink = Callable[[DataAccessEvent], None]


def emit(sink: EventSink | None, event: DataAccessEvent) -> None:
    """Hand ``event`` to ``sink`` (if any); a failing sink is logged, never raised."""
    if sink is None:
        return
    try:
        sink(event)
    except Exception as exc:
        log.warning("data-access event sink failed: %s", type(exc).__name__)
