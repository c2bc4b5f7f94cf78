"""HTTP to the FHIR server: tokens, retries, errors and the token's boundaries.

One request policy, two drivers. The policy is a generator that *describes*
a request's life (get a token, send, maybe get new tokens after a 401 (two at most),
maybe wait and retry on 429/503, turn errors into :class:`FHIRError`); the
sync driver (``httpx.Client``) and the async driver (``httpx.AsyncClient``)
only execute its steps. So the notebook API and its async twin cannot drift
apart in what they retry or how they report errors.

Rules this module enforces:

* the bearer token goes only to URLs under the FHIR base it was issued with:
  a ``next`` link (or any URL) elsewhere raises :class:`UnsafeURL` before a
  byte is sent (fhirclient checks only the host; a path outside the base on
  the same host can be another tenant);
* retries are bounded (``max_retries``) and honour ``Retry-After`` in seconds
  or as an HTTP-date; a server asking for a longer wait than
  ``max_retry_after`` gets an error that says so instead of a silent hang;
* a 401 leads to a new token and a retry. If the new token is refused too
  (a kernel that still held an older EHR launch's token is handed the newest
  launch's, and that one was revoked meanwhile), it is reported as well and
  one more token is fetched: at most :data:`MAX_TOKEN_CHANGES` token changes
  per request, and never a retry with a token that did not change. So a
  withdrawn consent ends in the hub's ``ReauthenticationRequired`` in the
  same cell, not in a bare 401 first;
* one response is read as a stream and dropped past ``max_response_bytes``
  (after decompression, so a gzip bomb is stopped too): a huge or endless
  page costs at most that much memory, and the error names the cap and how
  to raise it;
* connection errors name the URL that failed; no message ever holds a token.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit

import httpx
import orjson

from ..smart.errors import safe_text
from ..smart.fhir_rules import is_loopback_host
from ..smart.retry_after import retry_after_seconds as parse_retry_after
from .errors import FHIRConnectionError, FHIRError, UnsafeURL
from .tokens import TokenInfo, TokenProvider

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "FHIRHTTP",
    "MAX_TOKEN_CHANGES",
    "AsyncFHIRHTTP",
    "Fetched",
    "RetryPolicy",
    "check_on_base",
    "parse_retry_after",
    "require_tls",
]

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"

#: New tokens tried per request after 401s. Two, not one: the first new token
#: may belong to the same stale session the refused one did (the hub hands out
#: its current token without refreshing when the refused one is older), and
#: only reporting *that* token makes the hub refresh or ask for a new sign-in.
#: Bounded, so a server that refuses every token cannot make a request loop.
MAX_TOKEN_CHANGES = 2
Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None
#: ``head(url, body so far) -> done``: called after each chunk of a 2xx answer until it
#: returns True, so that a caller can act on a page's first bytes (the pager reads the
#: ``next`` link there) while the rest is still on its way. It must not keep the buffer.
Head = Callable[[str, bytearray], bool]


def _on_sent(sent: Callable[[], None]) -> dict[str, Any]:
    """Request extensions that call ``sent()`` once the request is on the wire (httpcore's trace)."""

    def trace(name: str, info: Mapping[str, Any]) -> None:
        if name.endswith(".send_request_body.complete"):
            sent()

    return {"trace": trace}


#: Largest response body read, in bytes (decoded). A FHIR page of 1,000
#: resources is a few megabytes; parsed, a body takes several times its size
#: in memory, so this keeps one page well inside a notebook's memory.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up.

    ``backoff`` is the first wait when the server gives no ``Retry-After``; it
    doubles per attempt up to ``max_backoff`` (with jitter so that many
    kernels do not retry in lockstep).
    """

    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_retries > 20:
            raise ValueError("max_retries must be between 0 and 20")
        for name in ("backoff", "max_backoff", "max_retry_after"):
            value = getattr(self, name)
            if not (0 <= value < 86400):
                raise ValueError(f"{name} must be a number of seconds between 0 and 86400")

    def backoff_delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Fetched:
    """A successful response, parsed, and the token (with its context) it was read with.

    ``data`` is ``{}`` for an answer without a body (204, 304, ``Prefer:
    return=minimal``); ``headers`` keeps ``ETag``, ``Location`` and
    ``Last-Modified`` (lower-cased names). A page fetched with ``parse=False``
    has ``data`` ``{}`` and its undecoded JSON in ``body``, so that the
    parsing can happen elsewhere (while the next page is on its way).
    """

    data: dict[str, Any]
    url: str
    status: int
    token: TokenInfo
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _climbs_out(path: str) -> bool:
    """True if a server could read ``path`` as leaving the directory it names.

    Servers differ in how they normalise a path, and each difference is a way
    out of the base: percent-encoded dots (``%2e%2e``, also double-encoded),
    an encoded slash or backslash (``..%2f``, ``%5c``) that some servers decode
    before splitting, a raw backslash that Windows servers treat as a slash,
    Tomcat-style path parameters (``..;``, ``..;jsessionid=x``) that Java
    servers strip after the dot-segment check, and control characters (``..%00``)
    that a server may cut the segment at. FHIR REST paths need none of
    them (ids are ``[A-Za-z0-9-.]``), so any such spelling is refused.
    """
    decoded = path
    for _ in range(3):  # a double-encoded %252e%252e is %2e%2e to a server that decodes twice
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    if (
        "\\" in decoded
        or decoded.count("/") != path.count("/")
        or any(c < " " or c == "\x7f" for c in decoded)
    ):
        return True
    return any(s.split(";", 1)[0].strip() in (".", "..") for s in decoded.split("/"))


def check_on_base(url: str, base: str) -> str:
    """Return ``url`` if it lies under the FHIR ``base``; raise :class:`UnsafeURL` otherwise.

    Same scheme, host and port, and a path equal to the base path or below it,
    with no dot segments in any spelling a server might read as one
    (:func:`_climbs_out`).
    """
    if _origin(url) != _origin(base):
        raise UnsafeURL(
            f"refused to send the access token to {safe_text(url, 200)}: it is not on the FHIR "
            f"server {base} the token belongs to (a paging link pointing elsewhere is either a "
            "server misconfiguration or an attempt to steal the token)",
            url=safe_text(url, 200),
        )
    path = urlsplit(url).path
    base_path = urlsplit(base).path.rstrip("/")
    if (path != base_path and not path.startswith(base_path + "/")) or _climbs_out(path):
        raise UnsafeURL(
            f"refused to send the access token to {safe_text(url, 200)}: its path is outside "
            f"the FHIR base {base}",
            url=safe_text(url, 200),
        )
    return url


def require_tls(base: str, allow_http: bool = False) -> str:
    """Return ``base`` unless it is plain HTTP to another machine (the token would travel in clear).

    SMART App Launch: tokens go only to authenticated servers over TLS. Plain
    HTTP stays possible on this machine (the sandbox; ``localhost``, 127.0.0.0/8,
    ``::1``: :func:`~jupyterhub_smart.smart.fhir_rules.is_loopback_host`) and, with
    ``allow_http=True``, for a test server on a private network.
    """
    if urlsplit(base).scheme == "http" and not allow_http and not is_loopback_host(base):
        raise UnsafeURL(
            f"refused to send an access token over plain HTTP to {safe_text(base, 200)}: use "
            "https, or pass allow_http=True for a test server on a private network",
            url=safe_text(base, 200),
        )
    return base


def _diagnostics(body: Any) -> tuple[list[str], dict[str, Any] | None]:
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return [], None
    texts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if not text:
            text = issue.get("code")
        if text:
            texts.append(safe_text(text, 500))
    return texts, body


_HINTS = {
    401: "the access token was refused even after fetching a new one; if you are in a "
    "jupyterhub-smart hub, sign in again; with a fixed token, get a new one",
    403: "the server refused access: your session's scopes (client.context.scopes) or the "
    "server's policy do not allow this",
    404: "not found (or not visible to this session)",
}


def _too_large(url: str, status: int, limit: int, seen: str) -> FHIRError:
    return FHIRError(
        f"GET {url}: the response is larger than max_response_bytes={limit:,} ({seen}); "
        "stopped reading it. If this server's pages are this large, ask for smaller pages "
        "(connect(page_size=...)) or raise the cap (connect(max_response_bytes=...))",
        status=status,
        url=url,
    )


def _declared_length(response: httpx.Response) -> int | None:
    """Content-Length when it is a plain number and the body is not compressed."""
    value = response.headers.get("Content-Length", "")
    if not value.isdigit() or response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    return int(value)


def _buffered(response: httpx.Response, body: bytes) -> httpx.Response:
    """A read response holding ``body`` (already decoded) in place of the stream."""
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    reason = response.extensions.get("reason_phrase")
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions={"reason_phrase": reason} if reason else {},
    )


class _Capped:
    """Collects one response's decoded chunks, refusing past ``limit`` bytes."""

    def __init__(self, response: httpx.Response, url: str, limit: int) -> None:
        self.response = response
        self.url = url
        self.limit = limit
        self.body = bytearray()
        declared = _declared_length(response)
        if declared is not None and declared > limit:
            raise _too_large(url, response.status_code, limit, f"Content-Length {declared:,}")

    def add(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.limit:
            raise _too_large(
                self.url, self.response.status_code, self.limit, "more than that arrived"
            )

    def done(self) -> httpx.Response:
        return _buffered(self.response, bytes(self.body))


def fhir_error(response: httpx.Response, url: str, method: str = "GET") -> FHIRError:
    """A :class:`FHIRError` for an error response, carrying the OperationOutcome's diagnostics."""
    status = response.status_code
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
    diagnostics, outcome = _diagnostics(body)
    detail = "; ".join(diagnostics) if diagnostics else _HINTS.get(status, "")
    message = f"{method} {url} failed: HTTP {status} {response.reason_phrase}".rstrip()
    if detail:
        message += f": {detail}"
    return FHIRError(message, status=status, url=url, diagnostics=diagnostics, outcome=outcome)


def parse_json(response: httpx.Response, url: str) -> dict[str, Any]:
    """The JSON object of a 2xx response, or a :class:`FHIRError` saying it is not one.

    An answer without a body (204, 304, a write with ``Prefer: return=minimal``) is ``{}``.
    """
    return parse_body(response.content, response.status_code, url)


def parse_body(content: bytes, status: int, url: str) -> dict[str, Any]:
    """:func:`parse_json` of a body already read (a page fetched with ``parse=False``)."""
    if not content and status in (201, 200, 204, 304):
        return {}
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise FHIRError(
            f"GET {url}: the server's answer is not valid JSON ({exc.msg} at byte {exc.pos}); "
            "is the FHIR base URL right?",
            status=status,
            url=url,
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise FHIRError(
            f"GET {url}: the server's answer is JSON but not a FHIR resource (no resourceType)",
            status=status,
            url=url,
        )
    return data


# --- the request policy ---------------------------------------------------------------


class _NeedToken:
    pass


@dataclass(frozen=True)
class _Invalidate:
    access_token: str


@dataclass(frozen=True)
class _Send:
    url: str
    headers: dict[str, str]
    method: str = "GET"
    content: bytes | None = None


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step = _NeedToken | _Invalidate | _Send | _Sleep
_NEED_TOKEN = _NeedToken()


def _target(path_or_url: str, params: Params, base: str) -> str:
    """Absolute URL for a relative FHIR path (``Observation``) or a full (``next``) URL."""
    if urlsplit(path_or_url).scheme:
        url = path_or_url
    elif path_or_url.startswith("/"):
        url = urljoin(base + "/", path_or_url)  # host-relative next link (fhir-py#83)
    else:
        url = f"{base}/{path_or_url}"
    if params:
        items = params.items() if isinstance(params, Mapping) else params
        query = urlencode([(k, str(v)) for k, v in items])
        url += ("&" if "?" in url else "?") + query
    return check_on_base(url, base)


class _Policy:
    """The generator-driven request life shared by both drivers."""

    def __init__(
        self,
        provider: TokenProvider,
        default_base: str | None,
        retry: RetryPolicy,
        allow_http: bool = False,
    ) -> None:
        self.provider = provider
        self.default_base = default_base.rstrip("/") if default_base else None
        self.retry = retry
        self.allow_http = allow_http

    def base_of(self, info: TokenInfo) -> str:
        base = info.fhir_base_url or self.default_base
        if not base:
            raise FHIRError(
                "no FHIR base URL: pass connect(fhir_base_url=...) or return 'fhir_base_url' "
                "from your token provider"
            )
        return require_tls(base, self.allow_http)

    def flow(
        self,
        path_or_url: str,
        params: Params,
        method: str = "GET",
        content: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Generator[_Step, Any, tuple[httpx.Response, str, TokenInfo]]:
        """One request's life. POST and PATCH are not idempotent: they are retried only
        when the server cannot have acted on them (a refused connection, a 429)."""
        info: TokenInfo = yield _NEED_TOKEN
        url = _target(path_or_url, params, self.base_of(info))
        idempotent = method not in ("POST", "PATCH")
        changes = 0  # new tokens tried after a 401 (at most MAX_TOKEN_CHANGES)
        attempt = 0
        while True:
            headers = {**(extra_headers or {}), "Authorization": f"Bearer {info.access_token}"}
            try:
                response: httpx.Response = yield _Send(url, headers, method, content)
            except httpx.TransportError as exc:
                resendable = idempotent or isinstance(exc, httpx.ConnectError)
                if resendable and attempt < self.retry.max_retries:
                    delay = self.retry.backoff_delay(attempt)
                    log.warning(
                        "FHIR %s %s: %s; retry %d/%d in %.1f s",
                        method,
                        url,
                        type(exc).__name__,
                        attempt + 1,
                        self.retry.max_retries,
                        delay,
                    )
                    yield _Sleep(delay)
                    attempt += 1
                    continue
                raise FHIRConnectionError(
                    f"could not reach the FHIR server at {url}: {type(exc).__name__}"
                    f" ({safe_text(exc, 200)}) after {attempt + 1} attempt(s); check that the "
                    "server is up and the FHIR base URL is right",
                    url=url,
                ) from exc
            status = response.status_code
            if status == 401 and changes < MAX_TOKEN_CHANGES:
                # Report the refused token (the hub then refreshes or says to sign in
                # again) and retry only if the provider has another one: no loop.
                yield _Invalidate(info.access_token)
                fresh: TokenInfo = yield _NEED_TOKEN
                if fresh.access_token != info.access_token:
                    changes += 1
                    log.info(
                        "FHIR %s %s: 401, retrying with a new access token (%d/%d)",
                        method,
                        url,
                        changes,
                        MAX_TOKEN_CHANGES,
                    )
                    check_on_base(url, self.base_of(fresh))
                    info = fresh
                    continue
            retryable = status in self.retry.retry_statuses and (idempotent or status == 429)
            if retryable and attempt < self.retry.max_retries:
                asked = parse_retry_after(response.headers.get("Retry-After"))
                if asked is not None and asked > self.retry.max_retry_after:
                    error = fhir_error(response, url, method)
                    raise FHIRError(
                        f"{error} (the server asks to retry in {asked:.0f} s, longer than "
                        f"max_retry_after={self.retry.max_retry_after:.0f} s: try again later)",
                        status=status,
                        url=url,
                        diagnostics=error.diagnostics,
                        outcome=error.outcome,
                    )
                delay = asked if asked is not None else self.retry.backoff_delay(attempt)
                log.warning(
                    "FHIR %s %s: HTTP %d; retry %d/%d in %.1f s%s",
                    method,
                    url,
                    status,
                    attempt + 1,
                    self.retry.max_retries,
                    delay,
                    " (Retry-After)" if asked is not None else "",
                )
                yield _Sleep(delay)
                attempt += 1
                continue
            if status >= 400:
                raise fhir_error(response, url, method)
            return response, url, info


_KEPT_HEADERS = ("etag", "location", "last-modified", "content-location")


def _fetched(response: httpx.Response, url: str, info: TokenInfo, parse: bool = True) -> Fetched:
    headers = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
    if not parse:
        return Fetched({}, url, response.status_code, info, headers, response.content)
    return Fetched(parse_json(response, url), url, response.status_code, info, headers)


def _headers(user_agent: str) -> dict[str, str]:
    return {"Accept": FHIR_JSON, "User-Agent": user_agent}


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1")
    return value


DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=60.0)
USER_AGENT = "jupyterhub-smart-notebook"


class FHIRHTTP:
    """Blocking driver: one keep-alive ``httpx.Client`` per client, shareable by threads."""

    def __init__(
        self,
        provider: TokenProvider,
        *,
        default_base: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = USER_AGENT,
        allow_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.policy = _Policy(provider, default_base, retry or RetryPolicy(), allow_http)
        self.provider = provider
        self.max_response_bytes = _positive("max_response_bytes", max_response_bytes)
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers=_headers(user_agent),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )

    def get(
        self,
        path_or_url: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        *,
        parse: bool = True,
        head: Head | None = None,
        sent: Callable[[], None] | None = None,
    ) -> Fetched:
        """GET a FHIR path (``"Patient/123"``) or an absolute URL on the base; parsed JSON
        (or, ``parse=False``, the body as read, in ``Fetched.body``). ``head``: see
        :data:`Head`; ``sent()`` is called when the request is on the wire (each attempt)."""
        return self.request(
            "GET", path_or_url, params, headers=headers, parse=parse, head=head, sent=sent
        )

    def request(
        self,
        method: str,
        path_or_url: str,
        params: Params = None,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        parse: bool = True,
        head: Head | None = None,
        sent: Callable[[], None] | None = None,
    ) -> Fetched:
        """Any FHIR interaction (``PUT Observation/1`` with a body...); parsed JSON or ``{}``."""
        flow = self.policy.flow(path_or_url, params, method, content, headers)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                response, url, info = stop.value
                return _fetched(response, url, info, parse)
            value, error = None, None
            if isinstance(step, _Send):
                try:
                    value = self._fetch(step, head, sent)
                except httpx.TransportError as exc:
                    error = exc
            elif isinstance(step, _NeedToken):
                value = self.provider.get()
            elif isinstance(step, _Invalidate):
                self.provider.invalidate(step.access_token)
            else:
                time.sleep(step.seconds)

    def _fetch(
        self, step: _Send, head: Head | None = None, sent: Callable[[], None] | None = None
    ) -> httpx.Response:
        request = self._client.build_request(
            step.method,
            step.url,
            headers=step.headers,
            content=step.content,
            extensions=_on_sent(sent) if sent is not None else None,
        )
        response = self._client.send(request, stream=True)
        try:
            body = _Capped(response, step.url, self.max_response_bytes)
            if not response.is_success:
                head = None
            for chunk in response.iter_bytes():
                body.add(chunk)
                if head is not None and head(step.url, body.body):
                    head = None
            return body.done()
        finally:
            response.close()

    def close(self) -> None:
        self._client.close()


class AsyncFHIRHTTP:
    """Asyncio driver of the same policy over ``httpx.AsyncClient``."""

    def __init__(
        self,
        provider: TokenProvider,
        *,
        default_base: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = USER_AGENT,
        max_connections: int = 20,
        allow_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.policy = _Policy(provider, default_base, retry or RetryPolicy(), allow_http)
        self.provider = provider
        self.max_response_bytes = _positive("max_response_bytes", max_response_bytes)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers=_headers(user_agent),
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def get(
        self,
        path_or_url: str,
        params: Params = None,
        *,
        parse: bool = True,
        head: Head | None = None,
    ) -> Fetched:
        """Async twin of :meth:`FHIRHTTP.get` (``head`` runs on the event loop)."""
        flow = self.policy.flow(path_or_url, params)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                response, url, info = stop.value
                return _fetched(response, url, info, parse)
            value, error = None, None
            if isinstance(step, _Send):
                try:
                    value = await self._fetch(step, head)
                except httpx.TransportError as exc:
                    error = exc
            elif isinstance(step, _NeedToken):
                value = await self.provider.aget()
            elif isinstance(step, _Invalidate):
                self.provider.invalidate(step.access_token)
            else:
                await asyncio.sleep(step.seconds)

    async def _fetch(self, step: _Send, head: Head | None = None) -> httpx.Response:
        request = self._client.build_request(
            step.method, step.url, headers=step.headers, content=step.content
        )
        response = await self._client.send(request, stream=True)
        try:
            body = _Capped(response, step.url, self.max_response_bytes)
            if not response.is_success:
                head = None
            async for chunk in response.aiter_bytes():
                body.add(chunk)
                if head is not None and head(step.url, body.body):
                    head = None
            return body.done()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
