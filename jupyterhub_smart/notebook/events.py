"""Data-access events: the seam where a notebook's reads reach the audit trail.

The client calls an optional *event sink* after each FHIR request it makes on
the researcher's behalf. In a jupyterhub-smart single-user server,
``connect()`` uses the hub's reporter by default
(:class:`.reporting.HubAuditReporter`), which POSTs batches to ``{hub}/hub/api/smart/audit``.

A sink must return at once (queue and send off the hot path) and be
thread-safe: search pages are fetched one ahead in a worker thread, which
calls the sink for the pages it fetched. A sink that raises is logged and
ignored: an audit hiccup must not break an analysis, and a sink that must fail
closed can do so by its own policy. A sink with a ``flush()`` method is
flushed when the client is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from ..smart.fhir_rules import PATIENT_SEARCH_PARAMS, is_fhir_id, is_resource_type, patient_id

__all__ = ["DataAccessEvent", "EventSink", "emit", "event_patient", "request_event"]

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


def event_patient(
    launched: str | None,
    resource_type: str,
    resource_id: str | None,
    params: Sequence[tuple[str, str]],
) -> str | None:
    """The patient a request is about, for its data-access event.

    A read of ``Patient/x`` or a search naming one patient (``patient=x``,
    ``subject=Patient/x``, ``Patient?_id=x``) is about that patient, whatever
    the launch context says; a search naming several is about no single one
    (None); otherwise it is the launched patient (patient-level scopes keep
    the server to that patient's compartment).
    """
    if resource_type == "Patient" and resource_id:
        return resource_id
    named = [
        value
        for name, value in params
        if name in PATIENT_SEARCH_PARAMS or (resource_type == "Patient" and name == "_id")
    ]
    if not named:
        return launched
    if len(named) > 1 or "," in named[0]:
        return None
    return patient_id(named[0])


def _count(body: bytes | None, action: str) -> int:
    """Resources in a successful answer: a Bundle's entries, else 1 for a resource."""
    if not body:
        return 0
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        return 0
    if data["resourceType"] == "Bundle" and action != "read":
        entries = data.get("entry")
        return len(entries) if isinstance(entries, list) else 0
    return 0 if data["resourceType"] == "OperationOutcome" else 1


def request_event(
    url: str,
    base: str,
    status: int,
    *,
    launched: str | None,
    body: bytes | None = None,
) -> DataAccessEvent | None:
    """The data-access event of a request another library (fhirpy, fhirclient...) sent
    with this package's auth objects, or None when it is not a resource request.

    The request's shape is read from its URL under the FHIR base:
    ``Type`` or ``Type/_search`` (search), ``Type/id`` (read),
    ``Type/id/_history/vid`` (vread), ``Patient/id/Type`` (a compartment
    search, reported as a search of ``Type`` for that patient) and anything
    with a ``$operation`` segment (operation). ``body`` (a successful
    answer's bytes) gives the number of resources.
    """
    parts = urlsplit(url)
    base_path = urlsplit(base).path.rstrip("/")
    rest = parts.path[len(base_path) :].strip("/") if parts.path.startswith(base_path) else ""
    segments = [unquote(s) for s in rest.split("/")] if rest else []
    if not segments or not is_resource_type(segments[0]):
        return None
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    resource_type, resource_id = segments[0], None
    n = len(segments)
    if any(s.startswith("$") for s in segments):
        action = "operation"
        if n > 1 and is_fhir_id(segments[1]):
            resource_id = segments[1]
    elif n == 1 or (n == 2 and segments[1] == "_search"):
        action = "search"
    elif n == 2 and is_fhir_id(segments[1]):
        action, resource_id = "read", segments[1]
    elif n == 4 and segments[2] == "_history" and is_fhir_id(segments[1]):
        action, resource_id = "vread", segments[1]
    elif (
        n == 3
        and resource_type == "Patient"
        and is_fhir_id(segments[1])
        and is_resource_type(segments[2])
    ):
        action, resource_type = "search", segments[2]
        params = (("patient", segments[1]), *params)
    else:
        return None
    return DataAccessEvent(
        action=action,
        resource_type=resource_type,
        fhir_base_url=base,
        url=url,
        status=status,
        count=_count(body, action) if status < 400 else 0,
        patient=event_patient(launched, resource_type, resource_id, params),
        resource_id=resource_id,
        params=params,
    )


def emit(sink: EventSink | None, event: DataAccessEvent) -> None:
    """Hand ``event`` to ``sink`` (if any); a failing sink is logged, never raised."""
    if sink is None:
        return
    try:
        sink(event)
    except Exception as exc:
        log.warning("data-access event sink failed: %s", type(exc).__name__)
