"""The proxy process: a tornado server that checks, forwards, streams and records.

One request, in order (each step's module says why):

1. the raw target is a FHIR REST path under ``/services/<name>/<issuer key>/``
   (:mod:`.paths`), else 400;
2. the caller's JupyterHub token (``Authorization: token|Bearer``; never a
   cookie, never a URL parameter) is good and holds ``custom:smart:token``,
   the hub says, which also gives the user's EHR token (:mod:`.sessions`);
3. the key is the user's EHR, and the method and path are an interaction the
   granted scopes allow (:mod:`.access`), else 404/403 (recorded);
4. the user is within their concurrency and rate limits (:mod:`.limits`), else 429;
5. the hub's audit trail takes records (:mod:`.recorder`), else 503 (no record,
   no data);
6. the request goes to the EHR with allow-listed headers (:mod:`.headers`) and
   the EHR token; a 401 is reported to the hub and retried once with the new
   token; a redirect away from the FHIR base is refused (:mod:`.forward`);
7. the answer streams back chunk by chunk (``flush`` waits for the socket, so a
   slow reader slows the EHR read instead of filling memory), the EHR's base
   URL rewritten to the proxy's (:mod:`.rewrite`), resources and patients
   counted (:mod:`.scan`);
8. before the last chunk goes out, the request's record (:mod:`.records`) is
   durable in the hub's audit chain (:mod:`.recorder`, group-committed); if it
   cannot be, the connection is cut, so the caller never gets a complete answer
   the trail does not hold.

``GET /services/<name>/_context`` gives a kernel its session (the proxy URL of
its EHR, patient, scopes; never a token): ``connect()`` uses it in proxy mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import time
from typing import Any

import httpx
import orjson
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from ..audit import AuditUnavailable
from ..smart.issuer_key import issuer_key
from ..smart.tls import ca_bundle_context
from .access import FHIRRequest, check_scopes, classify
from .config import ProxyConfig
from .errors import ProxyError
from .forward import STREAM_ERRORS, Upstream, UpstreamResponse, redirect_target
from .headers import request_headers, response_headers
from .limits import UserLimits
from .paths import Target, parse_target
from .recorder import HubRecorder
from .records import Outcome, proxy_event
from .rewrite import BodyRewriter, rewrite_text
from .scan import BodyScanner
from .sessions import Session, Sessions

__all__ = ["ProxyState", "main", "make_app"]

log = logging.getLogger("jupyterhub_smart.proxy")

READY_LINE = "SMART FHIR proxy ready: "
_HOST = re.compile(r"(?:[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
_AUTH = re.compile(r"(?:token|bearer)\s+(\S+)\s*", re.IGNORECASE)
_REWRITTEN_TYPES = ("application/fhir+json", "application/json")
#: Seconds a context answer is good for in a kernel (a new EHR launch shows within it).
CONTEXT_LIFETIME = 300


class ProxyState:
    """What every request shares: settings, hub sessions, EHR client, limits, recorder."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.hub_http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self.sessions = Sessions(config, self.hub_http)
        self.recorder = HubRecorder(config.hub_api_url, config.service_token, config.hub_timeout)
        trust = ca_bundle_context(config.ehr_ca_bundle) if config.ehr_ca_bundle else None
        self.upstream = Upstream(config.timeout, ssl_context=trust)
        self.limits = UserLimits(
            max_concurrent=config.max_concurrent, rate=config.rate, burst=config.burst
        )

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.recorder.aclose()
        await self.hub_http.aclose()


class FHIRProxyHandler(RequestHandler):
    """Every request to the service: its own pages and the FHIR paths."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, state: ProxyState) -> None:
        self.state = state
        self.config = state.config

    # tornado dispatches per method; all go through one pipeline
    async def get(self, *_: str) -> None:
        await self._handle()

    async def head(self, *_: str) -> None:
        await self._handle()

    async def post(self, *_: str) -> None:
        await self._handle()

    async def put(self, *_: str) -> None:
        await self._handle()

    async def patch(self, *_: str) -> None:
        await self._handle()

    async def delete(self, *_: str) -> None:
        await self._handle()

    # ------------------------------------------------------------------ answers
    def _send_error(self, error: ProxyError) -> None:
        if self._headers_written:
            self._cut()
            return
        self.clear()
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/fhir+json")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(error.body()))

    def _json(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(body))

    def _cut(self) -> None:
        """End the connection without finishing the answer (the caller sees an error)."""
        with contextlib.suppress(Exception):
            stream = self.request.connection.detach()  # type: ignore[union-attr]
            stream.close()
        self._finished = True

    def _caller_token(self) -> str:
        match = _AUTH.fullmatch(self.request.headers.get("Authorization", ""))
        if match is None:
            raise ProxyError(
                401,
                "authentication_required",
                "Send your JupyterHub API token: Authorization: token $JUPYTERHUB_API_TOKEN "
                "(cookies and ?token= are not accepted).",
                headers={"WWW-Authenticate": 'token realm="jupyterhub"'},
            )
        return match.group(1)

    def _proxy_base(self, key: str) -> str:
        """This proxy's URL for the EHR ``key``, as the caller reached it."""
        forwarded = self.request.headers.get("X-Forwarded-Proto", "").lower()
        scheme = forwarded if forwarded in ("http", "https") else self.request.protocol
        host = self.request.host
        if not _HOST.fullmatch(host or ""):
            host = f"{self.config.host}:{self.config.port}"
        return f"{scheme}://{host}{self.config.prefix}{key}"

    # ---------------------------------------------------------------- pipeline
    async def _handle(self) -> None:
        started = time.monotonic()
        try:
            target = parse_target(self.request.uri or "", self.config.prefix)
            if target is None:
                self._json(
                    {"service": "jupyterhub-smart FHIR proxy", "ehrs": sorted(self.config.issuers)}
                )
                return
            caller = self._caller_token()
            if target.key == "_context":
                await self._context(caller, target)
                return
            if target.key not in self.config.issuers:
                raise ProxyError(404, "unknown_ehr", "No EHR of this hub has that key.")
            session, check = await self.state.sessions.get_deferred(caller)
        except ProxyError as error:
            self._send_error(error)
            return
        request = FHIRRequest(self.request.method or "GET", "unknown", params=())
        try:
            if issuer_key(session.issuer) != target.key:
                raise ProxyError(
                    404,
                    "other_ehr",
                    "Your session is with another EHR; use the proxy URL of that EHR.",
                    fhir_base_url=self._proxy_base(issuer_key(session.issuer)),
                )
            request = classify(self.request.method or "GET", target.segments, target.query)
            scope = check_scopes(session.scopes, request)
        except ProxyError as error:
            await self._record_refusal(session, request, error, started)
            self._send_error(error)
            return
        try:
            with self.state.limits.slot(session.user):
                await self._forward(caller, session, target, request, scope, started, check)
        except ProxyError as error:
            if error.status != 429:
                await self._record_refusal(session, request, error, started)
            self._send_error(error)

    async def _context(self, caller: str, target: Target) -> None:
        if target.segments or self.request.method not in ("GET", "HEAD"):
            raise ProxyError(404, "not_found", "Only GET _context.")
        session = await self.state.sessions.get(caller)
        key = issuer_key(session.issuer)
        self._json(
            {
                "fhir_base_url": self._proxy_base(key),
                "issuer": session.issuer,
                "scope": " ".join(session.scopes),
                "expires_at": int(time.time()) + CONTEXT_LIFETIME,
                **session.context,
            }
        )

    async def _record(
        self, session: Session, request: FHIRRequest, outcome: Outcome, scope: str | None
    ) -> None:
        event = proxy_event(
            request,
            outcome,
            username=session.user,
            fhir_user=session.context.get("fhirUser"),
            issuer=session.issuer,
            client_address=self.request.remote_ip,
            user_agent=self.request.headers.get("User-Agent"),
            scope=scope,
        )
        await self.state.recorder.record(event)

    async def _record_refusal(
        self, session: Session, request: FHIRRequest, error: ProxyError, started: float
    ) -> None:
        """A refused request of a known user is recorded too (no data went out)."""
        outcome = Outcome(
            status=error.status,
            problem=f"refused by the proxy: {error.error}",
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        with contextlib.suppress(AuditUnavailable):
            await self._record(session, request, outcome, None)

    async def _forward(
        self,
        caller: str,
        session: Session,
        target: Target,
        request: FHIRRequest,
        scope: str | None,
        started: float,
        check: asyncio.Future[Session] | None = None,
    ) -> None:
        if not await self.state.recorder.ready():
            raise ProxyError(
                503,
                "audit_unavailable",
                "The hub's audit trail cannot take the proxy's records right now, so the "
                "proxy forwards nothing; retry in a moment.",
                headers={"Retry-After": "5"},
            )
        method = request.method
        body = self.request.body if method in ("POST", "PUT", "PATCH") else None
        headers = request_headers(self.request.headers.get_all())
        suffix = f"/{target.path}" if target.path else ""
        query = f"?{target.query}" if target.query else ""
        path = f"{suffix}{query}"
        upstream = self.state.upstream
        response = await upstream.open(
            method, session.fhir_base_url, path, headers, body, session.access_token
        )
        if response.status_code == 401:
            await response.aclose()
            session = await self.state.sessions.get(caller, rejected=session.access_token)
            response = await upstream.open(
                method, session.fhir_base_url, path, headers, body, session.access_token
            )
            if response.status_code == 401:
                await response.aclose()
                raise ProxyError(
                    401,
                    "ehr_refused_token",
                    "The EHR refused the session's access token twice; sign in again if this "
                    "lasts.",
                    login_url=session.login_url,
                )
        try:
            redirect_target(response, session.fhir_base_url)
            if check is not None:  # the caller's token, checked while the EHR answered
                await asyncio.shield(check)
        except ProxyError:
            await response.aclose()
            raise
        await self._stream(session, target, request, scope, response, started)

    async def _stream(
        self,
        session: Session,
        target: Target,
        request: FHIRRequest,
        scope: str | None,
        response: UpstreamResponse,
        started: float,
    ) -> None:
        base = session.fhir_base_url
        proxy_base = self._proxy_base(target.key)
        content_type = response.header("content-type") or ""
        self.set_status(response.status_code, reason=response.reason_phrase or "Unknown")
        self.clear_header("Content-Type")
        for name, value in response_headers(
            response.headers, lambda text: rewrite_text(text, base, proxy_base)
        ):
            if name.lower() in self._headers:
                self.add_header(name, value)
            else:
                self.set_header(name, value)
        self.set_header("Cache-Control", response.header("cache-control") or "no-store")
        media = content_type.split(";", 1)[0].strip().lower()
        rewriter = BodyRewriter(base, proxy_base) if media in _REWRITTEN_TYPES else None
        scanner = BodyScanner(content_type)
        outcome = Outcome(status=response.status_code)
        pending = b""
        # tornado leaves Nagle's algorithm on until an answer finishes: a chunk's last,
        # short segment would then wait for the client's (delayed) ACK of the one before.
        with contextlib.suppress(AttributeError, OSError):
            self.request.connection.stream.set_nodelay(True)  # type: ignore[union-attr]
        try:
            async for chunk in response.aiter_bytes():
                scanner.feed(chunk)
                out = rewriter.feed(chunk) if rewriter is not None else chunk
                if pending:
                    self.write(pending)
                    outcome.bytes_sent += len(pending)
                    await self.flush()
                pending = out
            if rewriter is not None:
                pending += rewriter.finish()
        except StreamClosedError:
            outcome.problem = "the client disconnected before the answer was complete"
        except STREAM_ERRORS as exc:
            outcome.problem = f"the EHR's answer broke off ({type(exc).__name__})"
        finally:
            await response.aclose()
        count = scanner.finish()
        outcome.count = count if response.status_code < 400 else 0
        outcome.patients, outcome.patients_omitted = scanner.patients, scanner.patients_omitted
        outcome.bytes_sent += len(pending) if outcome.problem is None else 0
        outcome.duration_ms = int((time.monotonic() - started) * 1000)
        try:
            await self._record(session, request, outcome, scope)
        except AuditUnavailable:
            log.error("audit record of a proxied request not durable: answer cut (fail closed)")
            if not self._headers_written:
                self._send_error(
                    ProxyError(
                        503,
                        "audit_unavailable",
                        "The audit trail cannot be written; retry in a moment.",
                        headers={"Retry-After": "5"},
                    )
                )
            else:
                self._cut()
            return
        if outcome.problem is not None:
            self._cut()
            return
        if pending and request.method != "HEAD":
            self.write(pending)
        with contextlib.suppress(StreamClosedError):
            await self.finish()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Unexpected errors: the type and where, never the request's headers (tokens)."""
        log.error(
            "FHIR proxy: unexpected %s", getattr(typ, "__name__", typ), exc_info=(typ, value, tb)
        )


def make_app(state: ProxyState) -> Application:
    """The tornado application of one proxy process."""
    return Application([(r".*", FHIRProxyHandler, {"state": state})], log_function=_access_log)


def _access_log(handler: RequestHandler) -> None:
    """One line per request: status, method, path without the query (values may be clinical)."""
    request = handler.request
    path = (request.path or "")[:300]
    log.info(
        "%d %s %s %.1fms",
        handler.get_status(),
        request.method,
        path,
        1000.0 * request.request_time(),
    )


async def _watch_parent(state: ProxyState, server: HTTPServer, stop: asyncio.Event) -> None:
    """A managed proxy orphaned by a crashed hub serves on, and leaves once a hub is back.

    JupyterHub stops its managed services when it shuts down, but a hub that
    crashes leaves this process running. While the hub is away it forwards
    nothing (no record, no data: 503 ``audit_unavailable``). When the hub answers
    again it has started a new proxy on the same port (``SO_REUSEPORT``), so
    this one stops listening and exits.
    """
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() == parent:
            continue
        try:
            answer = await state.hub_http.get(state.config.hub_api_url + "/", timeout=2)
        except httpx.HTTPError:
            continue
        if answer.status_code == 200:
            log.warning("FHIR proxy: orphaned by a hub that is back; handing over and exiting")
            server.stop()
            stop.set()


async def serve(config: ProxyConfig) -> None:
    """Run the proxy until SIGTERM/SIGINT (or, if managed, until a new hub took over)."""
    state = ProxyState(config)
    server = HTTPServer(make_app(state), max_body_size=config.max_request_body, xheaders=False)
    sockets = bind_sockets(
        config.port, config.host, reuse_port=hasattr(__import__("socket"), "SO_REUSEPORT")
    )
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(_watch_parent(state, server, stop)) if config.managed else None
    print(f"{READY_LINE}{config.listen_url.rstrip('/')}{config.prefix}", flush=True)
    await stop.wait()
    server.stop()
    if watcher is not None:
        watcher.cancel()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), timeout=30)
    await state.aclose()


def main(argv: list[str] | None = None) -> int:
    """``python -m jupyterhub_smart.proxy``: settings from the environment (see :mod:`.config`)."""
    logging.basicConfig(
        level=logging.INFO,
        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its lines hold full URLs
    try:
        config = ProxyConfig.from_env()
    except ValueError as exc:
        print(f"jupyterhub-smart FHIR proxy: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0
