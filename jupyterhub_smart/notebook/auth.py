"""Fresh SMART tokens for other HTTP clients: an ``httpx.Auth`` and a ``requests`` auth.

Use these when a library you already like (fhirpy, fhirclient, plain httpx or
requests) should read from the FHIR server with the session's tokens: each
request gets a token that is not about to expire, a 401 gets a new token and
a retry (and, if that token is refused too, one more: the same bound as the
client's own requests, :data:`~.http.MAX_TOKEN_CHANGES`), and the token is only ever attached to URLs under the FHIR
base it belongs to (anything else raises :class:`UnsafeURL` before sending).

fhirpy (sync, over requests)::

    from fhirpy import SyncFHIRClient
    fhir = connect()
    ehr = SyncFHIRClient(fhir.context.fhir_base_url,
                         requests_config={"auth": fhir.requests_auth()})
    ehr.resources("Observation").search(patient=fhir.context.patient).fetch()

fhirclient::

    from fhirclient import server as fhir_server
    from fhirclient.models.observation import Observation
    fhir = connect()
    srv = fhir_server.FHIRServer(None, base_uri=fhir.context.fhir_base_url + "/")
    srv.session.auth = fhir.requests_auth()
    Observation.where({"patient": fhir.context.patient}).perform_resources_iter(srv)

httpx::

    with httpx.Client(auth=fhir.httpx_auth()) as http:
        http.get(f"{fhir.context.fhir_base_url}/Patient/{fhir.context.patient}")

Both are tested against the sandbox in ``tests/notebook/test_interop.py``.

Auditing: the auth objects made by ``fhir.requests_auth()`` and
``fhir.httpx_auth()`` report each resource request to the client's event sink
(in a jupyterhub-smart server, the hub's audit trail), read from the request's
URL and the answer's status and size: requests made through fhirpy or
fhirclient this way are on the trail like the client's own. (A token copied
out of the session and used elsewhere is not; see docs/audit.md.)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx

from .errors import FHIRError
from .events import EventSink, emit, request_event
from .http import MAX_TOKEN_CHANGES, check_on_base, require_tls
from .tokens import TokenInfo, TokenProvider

__all__ = ["SMARTAuth", "SMARTRequestsAuth"]


def _base(info: TokenInfo, default: str | None, allow_http: bool) -> str:
    base = info.fhir_base_url or default
    if not base:
        raise FHIRError("no FHIR base URL known: pass fhir_base_url=...")
    return require_tls(base.rstrip("/"), allow_http)


class SMARTAuth(httpx.Auth):
    """``httpx.Client(auth=SMARTAuth(provider))``: bearer tokens from a token provider."""

    requires_request_body = True  # a retried POST must be able to send its body again

    def __init__(
        self,
        provider: TokenProvider,
        fhir_base_url: str | None = None,
        *,
        allow_http: bool = False,
        event_sink: EventSink | None = None,
    ) -> None:
        self.provider = provider
        self.default_base = fhir_base_url
        self.allow_http = allow_http
        self.event_sink = event_sink

    def _sign(self, request: httpx.Request, info: TokenInfo) -> None:
        check_on_base(str(request.url), _base(info, self.default_base, self.allow_http))
        request.headers["Authorization"] = f"Bearer {info.access_token}"

    def _report(self, request: httpx.Request, response: httpx.Response, info: TokenInfo) -> None:
        if self.event_sink is None:
            return
        body = response.content if response.status_code < 400 else None
        event = request_event(
            str(request.url),
            _base(info, self.default_base, self.allow_http),
            response.status_code,
            launched=info.patient,
            body=body,
        )
        if event is not None:
            emit(self.event_sink, event)

    # These override httpx.Auth's own drivers (sync and async need different token
    # calls), so they do its two chores themselves: read the request body (a retry
    # sends it again) and, when reporting, the answer (its size is in the event).

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        info = self.provider.get()
        self._sign(request, info)
        response = yield request
        changes = 0
        while response.status_code == 401 and changes < MAX_TOKEN_CHANGES:
            self.provider.invalidate(info.access_token)
            fresh = self.provider.get()
            if fresh.access_token == info.access_token:
                break  # nothing new to try: the 401 stands
            changes += 1
            info = fresh
            self._sign(request, fresh)
            response = yield request
        if self.event_sink is not None and response.status_code < 400:
            response.read()
        self._report(request, response, info)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        info = await self.provider.aget()
        self._sign(request, info)
        response = yield request
        changes = 0
        while response.status_code == 401 and changes < MAX_TOKEN_CHANGES:
            self.provider.invalidate(info.access_token)
            fresh = await self.provider.aget()
            if fresh.access_token == info.access_token:
                break  # nothing new to try: the 401 stands
            changes += 1
            info = fresh
            self._sign(request, fresh)
            response = yield request
        if self.event_sink is not None and response.status_code < 400:
            await response.aread()
        self._report(request, response, info)


class SMARTRequestsAuth:
    """``session.auth = SMARTRequestsAuth(provider)`` for ``requests`` (and fhirpy, fhirclient).

    ``requests`` accepts any callable as auth; this one also registers a
    response hook that answers a 401 with a new token and a retry (as
    ``requests``' own digest auth does for its challenge), and a second 401
    with one more, like the client's own requests (``MAX_TOKEN_CHANGES``).
    """

    def __init__(
        self,
        provider: TokenProvider,
        fhir_base_url: str | None = None,
        *,
        allow_http: bool = False,
        event_sink: EventSink | None = None,
    ) -> None:
        self.provider = provider
        self.default_base = fhir_base_url
        self.allow_http = allow_http
        self.event_sink = event_sink

    def _sign(self, request: Any, info: TokenInfo) -> None:
        base = _base(info, self.default_base, self.allow_http)
        check_on_base(str(request.url), base)
        request.headers["Authorization"] = f"Bearer {info.access_token}"
        # for the data-access event: no token, only where and about whom
        request._smart_event_context = (base, info.patient)

    def _report(self, response: Any) -> None:
        context = getattr(response.request, "_smart_event_context", None)
        if self.event_sink is None or context is None:
            return
        base, patient = context
        ok = response.status_code < 400
        event = request_event(
            str(response.request.url),
            base,
            response.status_code,
            launched=patient,
            body=response.content if ok else None,
        )
        if event is not None:
            emit(self.event_sink, event)

    def __call__(self, request: Any) -> Any:
        info = self.provider.get()
        self._sign(request, info)
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response: Any, **kwargs: Any) -> Any:
        if getattr(response.request, "_smart_retried", False):
            self._report(response)
            return response
        # The adapter's send() below runs no hooks, so the retries loop here.
        changes = 0
        while response.status_code == 401 and changes < MAX_TOKEN_CHANGES:
            request = response.request
            used = request.headers.get("Authorization", "").partition(" ")[2]
            self.provider.invalidate(used)
            fresh = self.provider.get()
            if fresh.access_token == used:
                break  # nothing new to try: the 401 stands
            changes += 1
            response.content  # noqa: B018 - drain the body so the connection can be reused
            response.close()
            retry = request.copy()
            retry._smart_retried = True
            self._sign(retry, fresh)
            new_response = response.connection.send(retry, **kwargs)
            new_response.history[:0] = [*response.history, response]
            new_response.request = retry
            response = new_response
        self._report(response)
        return response
