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

JupyterHub's own authentication of a service token (a database lookup, scope
resolution, activity bookkeeping) is most of the hub's cost of such a post.
So the answer to a post authenticated that way carries a *record key*
(``X-SMART-Proxy-Record-Key``, random, made once per hub process, kept in
memory only), and the proxy sends its later posts to
``/hub/api/smart/proxy-records/keyed`` with that key in the same header: one
constant-time comparison instead. After a hub restart the key is unknown (403
``record_key_unknown``) and the proxy authenticates with its service token
again. The key is never logged; it is worth what the proxy's service token is
worth for this one endpoint, until the hub restarts.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from tornado import web
from tornado.log import app_log
from tornado.web import RequestHandler

from ..audit import AuditLog, AuditUnavailable
from ..audit.events import action_of

__all__ = [
    "PROXY_RECORDED_BY",
    "RECORD_KEY_HEADER",
    "KeyedProxyRecordsHandler",
    "ProxyRecordsHandler",
    "proxy_records_handlers",
]

#: The detail that marks a record made by the FHIR proxy.
PROXY_RECORDED_BY = {"type": "recorded-by", "valueString": "fhir-proxy"}
#: Events in one post at most (the proxy batches far fewer).
MAX_EVENTS = 1000
#: Header of the record key: in answers to the service-token path, in keyed posts.
RECORD_KEY_HEADER = "X-SMART-Proxy-Record-Key"
_KEY_SETTING = "_smart_proxy_record_key"


def is_proxy_record(event: Any) -> bool:
    """A ``data-access`` event the proxy made (the only kind it may post)."""
    if not isinstance(event, Mapping) or action_of(event) != "data-access":
        return False
    return any(
        isinstance(entity, Mapping)
        and any(d == PROXY_RECORDED_BY for d in entity.get("detail") or ())
        for entity in event.get("entity") or ()
    )


def _record_key(settings: dict[str, Any]) -> str:
    """The hub process's record key (made on first use, memory only)."""
    key = settings.get(_KEY_SETTING)
    if not isinstance(key, str):
        key = settings[_KEY_SETTING] = secrets.token_urlsafe(32)
    return key


def _parse(body: bytes) -> list[Mapping[str, Any]]:
    """The events of a post; HTTPError 400/413 naming what is wrong."""
    try:
        parsed = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        raise web.HTTPError(400, "body is not valid JSON") from None
    events = parsed.get("events") if isinstance(parsed, dict) else None
    if not isinstance(events, list):
        raise web.HTTPError(400, 'body must be {"events": [...]}')
    if len(events) > MAX_EVENTS:
        raise web.HTTPError(413, f"at most {MAX_EVENTS} events per post")
    for index, event in enumerate(events):
        if not is_proxy_record(event):
            raise web.HTTPError(400, f"events[{index}] is not a FHIR proxy data-access record")
    return events


async def _write(handler: RequestHandler, authenticator: Any) -> None:
    """Record the posted events (all durable before the answer), or answer 503."""
    events = _parse(handler.request.body)
    audit_log = authenticator.get_audit_log()
    assert isinstance(audit_log, AuditLog)
    if not events:
        if not audit_log.healthy:
            raise web.HTTPError(503, "the audit trail cannot be written right now")
        handler.finish({"recorded": 0})
        return
    try:
        await asyncio.gather(*(audit_log.record(event) for event in events))
    except AuditUnavailable as exc:
        app_log.error("FHIR proxy records not recorded: %s", exc)
        raise web.HTTPError(503, "the audit trail cannot be written right now") from None
    handler.set_status(201)
    handler.finish({"recorded": len(events)})


class ProxyRecordsHandler(APIHandler):
    """Append the FHIR proxy's records to the hub's audit log (service-token path)."""

    def _proxy_only(self) -> None:
        authenticator = self.authenticator
        caller = self.current_user
        if (
            getattr(authenticator, "fhir_access", None) != "proxy"
            or not isinstance(caller, orm.Service)
            or caller.name != authenticator.fhir_proxy_service_name
        ):
            raise web.HTTPError(403, "only the hub's FHIR proxy service posts proxy records")

    async def post(self) -> None:
        self._proxy_only()
        self.set_header(RECORD_KEY_HEADER, _record_key(self.settings))
        await _write(self, self.authenticator)


class KeyedProxyRecordsHandler(RequestHandler):
    """The same, for a caller holding the record key (no JupyterHub token lookup)."""

    def check_xsrf_cookie(self) -> None:
        """No cookies are used here: the record key in a header is the credential."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"status": status_code, "message": self._reason})

    async def post(self) -> None:
        authenticator = self.settings.get("authenticator")
        key = self.settings.get(_KEY_SETTING)
        given = self.request.headers.get(RECORD_KEY_HEADER, "")
        if (
            getattr(authenticator, "fhir_access", None) != "proxy"
            or not isinstance(key, str)
            or not hmac.compare_digest(given.encode(), key.encode())
        ):
            self.set_status(403)
            self.finish(
                {
                    "error": "record_key_unknown",
                    "message": "Authenticate at /hub/api/smart/proxy-records with the proxy "
                    "service's token to get the record key.",
                }
            )
            return
        await _write(self, authenticator)


#: Handlers for the authenticator's ``get_handlers`` (JupyterHub adds the ``/hub`` prefix).
proxy_records_handlers: list[tuple[str, type]] = [
    (r"/api/smart/proxy-records", ProxyRecordsHandler),
    (r"/api/smart/proxy-records/keyed", KeyedProxyRecordsHandler),
]
