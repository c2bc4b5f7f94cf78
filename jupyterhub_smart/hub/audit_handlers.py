"""``POST /hub/api/smart/audit``: notebooks report the FHIR requests they made.

The notebook client batches what it did (interaction, resource type, search
parameter NAMES, how many resources, HTTP status) and posts it here off its hot
path. The hub decides *who* did it: the identity comes from the API token that
authenticated the request, never from the body, so a notebook cannot write
events in someone else's name. Every field is validated (values are refused:
they could be clinical data), sizes are bounded (413), and a flood is
rate-limited per user (429) with a token bucket that costs no I/O. Events are
written with the log's group commit from worker threads, so a busy audit disk
never blocks the hub's event loop.

Request::

    POST /hub/api/smart/audit
    Authorization: token $JUPYTERHUB_API_TOKEN
    Content-Type: application/json

    {"events": [{"interaction": "search-type", "resource_type": "Observation",
                 "search_params": ["code", "date"], "count": 12, "status": 200,
                 "patient": "Patient/123"}]}

Responses: 201 ``{"recorded": N}`` once durable; 400 bad body (the message
names the field), 403 not a user's token or one without ``custom:smart:audit``
(:mod:`.scopes`), 413 too large, 415 not JSON, 429 rate
limited (``Retry-After``), 503 the audit trail cannot be written right now.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.user import User
from tornado import web
from tornado.escape import url_unescape

from ..audit import AuditLog, AuditUnavailable, data_access_event
from ..smart.fhir_rules import patient_id
from .clients import client_address
from .inactivity import record_activity
from .scopes import AUDIT_SCOPE, missing_scope_message

#: Fields a notebook may send for each event; anything else is refused.
EVENT_FIELDS = frozenset(
    {"interaction", "resource_type", "resource_id", "search_params", "count", "status", "patient"}
)
#: Fields that would claim an identity: the hub sets those from the token.
IDENTITY_FIELDS = frozenset(
    {"username", "user", "fhir_user", "fhirUser", "agent", "server_name", "client_address"}
)


@dataclass(frozen=True)
class AuditLimits:
    """Bounds on what one notebook may send (defaults suit a busy analysis)."""

    max_body_bytes: int = 256 * 1024
    max_events_per_request: int = 200
    events_per_second: float = 50.0  # sustained, per user
    burst: int = 2000  # events a user may send at once before being slowed down


class RateLimiter:
    """Per-user token buckets; in memory, O(1), no I/O (so it never blocks the hub)."""

    def __init__(self, limits: AuditLimits) -> None:
        self.limits = limits
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, cost: int) -> float:
        """Spend ``cost`` tokens; 0 if allowed, else seconds until it would be."""
        rate, burst = self.limits.events_per_second, float(self.limits.burst)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if cost > tokens:
                self._buckets[key] = (tokens, now)
                return (cost - tokens) / rate
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > 100_000:  # forget idle users, bound memory
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < burst}
            return 0.0


class SMARTAuditHandler(APIHandler):
    """Accept a batch of data-access events from a user's notebook."""

    def _limits(self) -> AuditLimits:
        limits = self.settings.get("smart_audit_limits") or getattr(
            self.authenticator, "audit_limits", None
        )
        return limits if isinstance(limits, AuditLimits) else AuditLimits()

    def _limiter(self) -> RateLimiter:
        limiter = self.settings.get("_smart_audit_rate_limiter")
        if limiter is None:
            limiter = self.settings["_smart_audit_rate_limiter"] = RateLimiter(self._limits())
        assert isinstance(limiter, RateLimiter)
        return limiter

    async def _audit_log(self) -> AuditLog:
        """The hub's one AuditLog: from the authenticator, or ``settings['smart_audit_log']``."""
        log = self.settings.get("smart_audit_log")
        if log is None:
            getter = getattr(self.authenticator, "get_audit_log", None)
            if callable(getter):
                log = getter()
                if asyncio.iscoroutine(log):
                    log = await log
            else:
                log = getattr(self.authenticator, "audit_log", None)
        if not isinstance(log, AuditLog):
            self.log.error("POST /api/smart/audit: the hub has no audit log configured")
            raise web.HTTPError(503, "the hub's audit trail is not configured")
        return log

    def _server_name(self) -> str | None:
        """The server whose token made the request, if it is one of the user's server tokens.

        JupyterHub notes each server's token as ``Server at {base_url}``; the
        name is taken from there only if it names a server this user has.
        """
        user = self.current_user
        get_token = getattr(self, "get_token", None)  # JupyterHub >= 4.1
        note = getattr(get_token() if callable(get_token) else None, "note", None) or ""
        if not isinstance(user, User):
            return None
        match = re.fullmatch(re.escape(f"Server at {user.base_url}") + r"([^/\s]*)/", note)
        if not match:
            return None
        name = url_unescape(match.group(1))
        return name if name in user.orm_user.orm_spawners else None

    async def post(self) -> None:
        user = self.current_user
        if user is None:
            raise web.HTTPError(403, "authentication required: send the notebook's API token")
        if not isinstance(user, User):
            raise web.HTTPError(403, "only a user's own token can report data access")
        withdrawn = getattr(self.authenticator, "access_withdrawn", None)
        reason = await withdrawn(user) if withdrawn is not None else None
        if reason is not None:
            await self.authenticator.withdraw_access(user, reason)
            raise web.HTTPError(403, f"This user is {reason}: no audit reports in their name.")
        if not self.has_scope(f"{AUDIT_SCOPE}!user={user.name}"):
            raise web.HTTPError(403, missing_scope_message(AUDIT_SCOPE))
        limits = self._limits()
        if len(self.request.body) > limits.max_body_bytes:
            raise web.HTTPError(
                413, f"audit batch too large (max {limits.max_body_bytes} bytes): send fewer events"
            )
        content_type = self.request.headers.get("Content-Type", "application/json")
        if not content_type.lower().split(";")[0].strip().endswith("json"):
            raise web.HTTPError(415, "send the events as application/json")
        items = self._parse(limits)
        wait = self._limiter().take(user.name, max(1, len(items)))
        if wait:
            retry = max(1, int(wait + 0.999))
            self.log.warning(
                "Audit reports from user %s rate-limited (%d events); retry in %ds",
                user.name,
                len(items),
                retry,
            )
            # Written here, not raised: tornado's error path would drop Retry-After.
            self.set_status(429)
            self.set_header("Retry-After", str(retry))
            self.finish({"status": 429, "message": f"too many audit events; retry after {retry} s"})
            return
        context = await self._context(user)
        server_name = self._server_name()
        client_address_ = client_address(self.request)
        user_agent = self.request.headers.get("User-Agent")
        events = []
        for index, item in enumerate(items):
            try:
                events.append(
                    data_access_event(
                        interaction=str(item.get("interaction") or ""),
                        resource_type=item.get("resource_type"),
                        resource_id=item.get("resource_id"),
                        search_params=item.get("search_params") or (),
                        count=item.get("count"),
                        status=item.get("status"),
                        patient=item.get("patient"),
                        username=user.name,
                        server_name=server_name,
                        client_address=client_address_,
                        user_agent=user_agent,
                        **context,
                    )
                )
            except (ValueError, TypeError) as exc:
                raise web.HTTPError(400, f"events[{index}]: {exc}") from None
        log = await self._audit_log()
        try:
            await asyncio.gather(*(log.record(event) for event in events))
        except AuditUnavailable as exc:
            self.log.error("Audit reports from user %s not recorded: %s", user.name, exc)
            raise web.HTTPError(
                503, "the audit trail cannot be written right now; retry later"
            ) from None
        record_activity(self, user)  # automatic logoff: a kernel at work keeps its user in
        self.set_status(201)
        self.finish({"recorded": len(events)})

    def _parse(self, limits: AuditLimits) -> list[Mapping[str, Any]]:
        try:
            body = orjson.loads(self.request.body or b"")
        except orjson.JSONDecodeError:
            raise web.HTTPError(400, "body is not valid JSON") from None
        if not isinstance(body, dict) or set(body) != {"events"}:
            raise web.HTTPError(400, 'body must be {"events": [...]}')
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise web.HTTPError(400, "events must be a non-empty list")
        if len(items) > limits.max_events_per_request:
            raise web.HTTPError(
                413, f"too many events in one request (max {limits.max_events_per_request})"
            )
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise web.HTTPError(400, f"events[{index}] must be an object")
            claimed = sorted(set(item) & IDENTITY_FIELDS)
            if claimed:
                raise web.HTTPError(
                    400,
                    f"events[{index}]: {', '.join(claimed)} not accepted: the hub takes the "
                    "identity from the API token",
                )
            unknown = sorted(set(item) - EVENT_FIELDS)
            if unknown:
                raise web.HTTPError(
                    400,
                    f"events[{index}]: unknown field(s) {', '.join(unknown)} "
                    f"(allowed: {', '.join(sorted(EVENT_FIELDS))}; names only, no values)",
                )
            for key in ("interaction", "resource_type", "resource_id", "patient"):
                if key in item and item[key] is not None and not isinstance(item[key], str):
                    raise web.HTTPError(400, f"events[{index}].{key} must be a string")
            if not isinstance(item.get("search_params", []), list):
                raise web.HTTPError(400, f"events[{index}].search_params must be a list of names")
            patient = item.get("patient")
            if patient is not None and patient_id(patient) is None:
                raise web.HTTPError(400, f"events[{index}].patient must be a Patient reference")
        return items

    async def _context(self, user: User) -> dict[str, Any]:
        """fhirUser and issuer from the user's auth_state (the hub's word, not the client's)."""
        try:
            state = await user.get_auth_state()
        except Exception:
            self.log.warning("Could not read auth_state of %s for an audit report", user.name)
            state = None
        if not isinstance(state, Mapping):
            return {"fhir_user": None, "issuer": None}
        fhir_user = state.get("fhirUser") or state.get("fhir_user")
        issuer = state.get("iss") or state.get("issuer")
        return {
            "fhir_user": fhir_user if isinstance(fhir_user, str) else None,
            "issuer": issuer if isinstance(issuer, str) else None,
        }


#: Handlers for the authenticator's ``get_handlers`` (JupyterHub adds the ``/hub`` prefix).
audit_handlers: list[tuple[str, type]] = [(r"/api/smart/audit", SMARTAuditHandler)]
