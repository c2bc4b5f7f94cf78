"""``POST /hub/api/smart/proxy-records``: the FHIR proxy's records go into the hub's chain.

In proxy mode every FHIR request is one ``data-access`` record. The proxy does
not keep a trail of its own: it sends each record here before the last chunk
of the answer goes out, and the hub appends it to *its* hash-chained log (one
writer, one chain). So the one accounting of disclosures (``audit query``,
``audit report``, ``/hub/smart/audit``), the alerts, the sinks (FHIR, syslog),
the signed checkpoints and retention all see proxy accesses as they see
everything else, with nothing to merge.

* Only the proxy service may post (its own JupyterHub service token, named by
  ``SMARTAuthenticator.fhir_proxy_service_name``, in proxy mode): 403 for
  anyone else, so a notebook cannot write proxy records.
* Only proxy ``data-access`` records are taken (``recorded-by: fhir-proxy``);
  they pass through the audit log's sanitizer like every other event.
* The events of one post are written together (the log's group commit), and
  the answer, 201 ``{"recorded": N}``, comes once they are durable: the proxy
  sends its answer's last bytes only then (no record, no data). 503 while the
  trail cannot be written.
* An empty ``events`` list is the proxy's probe: 200 if the trail is writable
  now, else 503 (the proxy asks before it forwards, after a failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from ..audit import AuditLog, AuditUnavailable
from ..audit.events import action_of

__all__ = ["PROXY_RECORDED_BY", "ProxyRecordsHandler", "proxy_records_handlers"]

#: The detail that marks a record made by the FHIR proxy.
PROXY_RECORDED_BY = {"type": "recorded-by", "valueString": "fhir-proxy"}
#: Events in one post at most (the proxy batches far fewer).
MAX_EVENTS = 1000


def is_proxy_record(event: Any) -> bool:
    """A ``data-access`` event the proxy made (the only kind it may post)."""
    if not isinstance(event, Mapping) or action_of(event) != "data-access":
        return False
    return any(
        isinstance(entity, Mapping)
        and any(d == PROXY_RECORDED_BY for d in entity.get("detail") or ())
        for entity in event.get("entity") or ()
    )


class ProxyRecordsHandler(APIHandler):
    """Append the FHIR proxy's records to the hub's audit log."""

    def _proxy_only(self) -> None:
        authenticator = self.authenticator
        caller = self.current_user
        if (
            getattr(authenticator, "fhir_access", None) != "proxy"
            or not isinstance(caller, orm.Service)
            or caller.name != authenticator.fhir_proxy_service_name
        ):
            raise web.HTTPError(403, "only the hub's FHIR proxy service posts proxy records")

    def _events(self) -> list[Mapping[str, Any]]:
        try:
            body = orjson.loads(self.request.body or b"")
        except orjson.JSONDecodeError:
            raise web.HTTPError(400, "body is not valid JSON") from None
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise web.HTTPError(400, 'body must be {"events": [...]}')
        if len(events) > MAX_EVENTS:
            raise web.HTTPError(413, f"at most {MAX_EVENTS} events per post")
        for index, event in enumerate(events):
            if not is_proxy_record(event):
                raise web.HTTPError(400, f"events[{index}] is not a FHIR proxy data-access record")
        return events

    async def post(self) -> None:
        self._proxy_only()
        events = self._events()
        audit_log = self.authenticator.get_audit_log()
        assert isinstance(audit_log, AuditLog)
        if not events:
            if not audit_log.healthy:
                raise web.HTTPError(503, "the audit trail cannot be written right now")
            self.finish({"recorded": 0})
            return
        try:
            await asyncio.gather(*(audit_log.record(event) for event in events))
        except AuditUnavailable as exc:
            self.log.error("FHIR proxy records not recorded: %s", exc)
            raise web.HTTPError(503, "the audit trail cannot be written right now") from None
        self.set_status(201)
        self.finish({"recorded": len(events)})


#: Handlers for the authenticator's ``get_handlers`` (JupyterHub adds the ``/hub`` prefix).
proxy_records_handlers: list[tuple[str, type]] = [
    (r"/api/smart/proxy-records", ProxyRecordsHandler)
]
