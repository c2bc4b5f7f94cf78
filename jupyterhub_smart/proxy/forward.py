"""Sending a request to the EHR and opening its answer as a stream.

One ``httpcore`` connection pool per process (connection pooling to the EHRs),
used directly rather than through an ``httpx.AsyncClient``: the proxy's
request is already checked and assembled (allow-listed path and query,
allow-listed headers), so httpx's client layer (URL parsing and merging,
cookie jar, auth and redirect hooks, event hooks, header models, response
decoding wrappers) added nothing but cost, about half of the proxy's CPU per
page in the benchmark. What that layer did that still matters is done here:

* redirects are never followed (the EHR token must not travel to wherever a
  ``Location`` points: :func:`redirect_target` decides what the caller sees);
* TLS is always verified: against the CA bundle the hub passes
  (``ehr_ca_bundle``, an internal CA's), else with the same context httpx
  makes (certifi; no settings from the environment, like ``trust_env=False``);
* ``Accept-Encoding: gzip, deflate`` is sent, as httpx did, and such a body is
  decoded as it streams (:class:`_Decoder`, output bounded per step), since
  the proxy scans and rewrites the body and sends it uncompressed;
* timeouts (connect, read, write, pool) are ``timeout`` seconds each.

The answer's body is read chunk by chunk by the caller and never held.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from functools import lru_cache
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from ..smart.tls import untrusted_certificate
from .errors import ProxyError
from .netio import PlainTCPBackend

__all__ = ["STREAM_ERRORS", "Upstream", "UpstreamResponse", "on_base", "redirect_target"]

#: Exceptions of an answer's body breaking off (network, protocol, timeout, bad encoding).
STREAM_ERRORS: tuple[type[Exception], ...] = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    zlib.error,
)
#: Exceptions of sending a request (plus :data:`STREAM_ERRORS`).
_SEND_ERRORS: tuple[type[Exception], ...] = (
    *STREAM_ERRORS,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
)
_ACCEPT_ENCODING = (b"Accept-Encoding", b"gzip, deflate")
_USER_AGENT = (b"User-Agent", b"jupyterhub-smart-fhir-proxy")
#: Most bytes one decoding step may produce (a small compressed chunk can expand a lot).
_DECODE_STEP = 256 * 1024


def on_base(url: str, base: str) -> bool:
    """True when ``url`` is the FHIR ``base`` or below it (same scheme, host, port)."""
    u, b = urlsplit(url), urlsplit(base)
    if (u.scheme.lower(), (u.hostname or "").lower(), u.port) != (
        b.scheme.lower(),
        (b.hostname or "").lower(),
        b.port,
    ):
        return False
    base_path = b.path.rstrip("/")
    return u.path == base_path or u.path.startswith(base_path + "/")


def redirect_target(response: UpstreamResponse, base: str) -> str | None:
    """Where a 3xx points if that is under the FHIR base; None for no redirect.

    A redirect anywhere else (another host, another path on the EHR's host,
    a presigned storage URL) raises :class:`ProxyError` 502: the proxy does not
    follow it with the token, nor hand the caller a way around the audit.
    """
    if not 300 <= response.status_code < 400 or response.status_code == 304:
        return None
    location = response.header("location")
    if not location:
        return None
    target = urljoin(response.url, location)
    if on_base(target, base):
        return target
    host = urlsplit(target).hostname or "?"
    raise ProxyError(
        502,
        "redirect_refused",
        f"The EHR redirected this request to {host}, outside its FHIR base; the proxy does "
        "not follow redirects away from the FHIR server (the EHR token would go with it).",
    )


class _Decoder:
    """``Content-Encoding`` gzip/deflate undone chunk by chunk, each step's output bounded."""

    def __init__(self, encoding: str) -> None:
        self._deflate = encoding == "deflate"
        # gzip: header and trailer checked; deflate: zlib-wrapped first, raw if that fails
        self._inner = zlib.decompressobj(zlib.MAX_WBITS if self._deflate else zlib.MAX_WBITS | 16)
        self._started = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if self._deflate and not self._started and data:
            self._started = True
            try:
                out.append(self._inner.decompress(data, _DECODE_STEP))
            except zlib.error:  # raw deflate, as some servers send it
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
                out.append(self._inner.decompress(data, _DECODE_STEP))
        else:
            out.append(self._inner.decompress(data, _DECODE_STEP))
        while self._inner.unconsumed_tail:
            out.append(self._inner.decompress(self._inner.unconsumed_tail, _DECODE_STEP))
        return out

    def finish(self) -> bytes:
        return self._inner.flush()


class UpstreamResponse:
    """The EHR's answer: status, headers as sent, and the body still unread."""

    __slots__ = ("_decoder", "_response", "headers", "reason_phrase", "status_code", "url")

    def __init__(self, response: httpcore.Response, url: str) -> None:
        self._response = response
        self.url = url
        self.status_code = response.status
        reason = response.extensions.get("reason_phrase", b"")
        self.reason_phrase = reason.decode("latin-1") if isinstance(reason, bytes) else ""
        #: (name, value) pairs in the EHR's order, repeats kept.
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]
        encoding = (self.header("content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise ProxyError(
                502,
                "ehr_encoding_unsupported",
                "The EHR answered with a content encoding the proxy cannot read; it asked for "
                "gzip or deflate only.",
            )
        self._decoder = None if encoding == "identity" else _Decoder(encoding.removeprefix("x-"))

    def header(self, name: str) -> str | None:
        """Header ``name`` (any case), repeats joined by ``, ``; None if absent."""
        name = name.lower()
        values = [value for key, value in self.headers if key.lower() == name]
        return ", ".join(values) if values else None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, decoded, as it arrives; :data:`STREAM_ERRORS` when it breaks off."""
        stream = self._response.stream
        assert isinstance(stream, AsyncIterable)
        decoder = self._decoder
        async for chunk in stream:
            if decoder is None:
                yield chunk
                continue
            for part in decoder.feed(chunk):
                if part:
                    yield part
        if decoder is not None:
            tail = decoder.finish()
            if tail:
                yield tail

    async def aclose(self) -> None:
        await self._response.aclose()


@lru_cache(maxsize=256)
def _origin(url_prefix: str) -> tuple[bytes, bytes, int | None, bytes]:
    """Scheme, host, port and ``Host`` header of a FHIR base (parsed once)."""
    parts = httpcore.URL(url_prefix)
    default = {b"http": 80, b"https": 443}.get(parts.scheme)
    name = b"[%b]" % parts.host if b":" in parts.host else parts.host
    host = name if parts.port in (None, default) else b"%b:%d" % (name, parts.port)
    return parts.scheme, parts.host, parts.port, host


class Upstream:
    """The proxy's HTTP client towards the EHRs: one pool for ``https://``, one for ``http://``.

    Plain-HTTP EHRs (a sandbox, an EHR behind a local TLS terminator) go through
    :class:`.netio.PlainTCPBackend`; TLS ones through httpcore's default backend.
    """

    def __init__(
        self,
        timeout: float,
        *,
        max_connections: int = 200,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if ssl_context is None:
            ssl_context = httpx.create_ssl_context(trust_env=False)
        self.tls = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
        )
        self.plain = httpcore.AsyncConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=PlainTCPBackend(),
        )
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }

    async def open(
        self,
        method: str,
        base: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        access_token: str,
    ) -> UpstreamResponse:
        """Send the request for ``base + target`` with the EHR token; the body is still unread.

        ``base`` is the FHIR base URL; ``target`` the checked path and query
        after it (``/Observation?patient=1``), sent as they are.
        """
        scheme, host, port, host_header = _origin(base)
        path = urlsplit(base).path.rstrip("/") + target
        out = [(b"Host", host_header)]
        out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if "accept" not in headers:
            out.append((b"Accept", b"*/*"))
        out += [
            _ACCEPT_ENCODING,
            _USER_AGENT,
            (b"Authorization", b"Bearer " + access_token.encode("latin-1")),
        ]
        if body or method in ("POST", "PUT", "PATCH"):
            out.append((b"Content-Length", b"%d" % len(body or b"")))
        request = httpcore.Request(
            method.encode("ascii"),
            httpcore.URL(scheme=scheme, host=host, port=port, target=path.encode("ascii")),
            headers=out,
            content=body if body else None,
            extensions=self._extensions,
        )
        try:
            pool = self.plain if scheme == b"http" else self.tls
            response = await pool.handle_async_request(request)
        except httpcore.TimeoutException:
            raise ProxyError(
                504,
                "ehr_timeout",
                f"The EHR ({host.decode()}) did not answer in time; retry later.",
            ) from None
        except _SEND_ERRORS as exc:
            untrusted = untrusted_certificate(exc)
            if untrusted is not None:  # a retry will not help: say so, and where trust is set
                raise ProxyError(
                    502,
                    "ehr_certificate_untrusted",
                    f"The EHR ({host.decode()}) presented a TLS certificate the proxy does not "
                    f"trust ({untrusted}); the hub's administrators set the CA in "
                    "SMARTAuthenticator.ehr_ca_bundle.",
                ) from None
            raise ProxyError(
                502,
                "ehr_unreachable",
                f"The EHR ({host.decode()}) could not be reached ({type(exc).__name__}); retry "
                "later.",
            ) from None
        try:
            return UpstreamResponse(response, base.rstrip("/") + target)
        except ProxyError:
            await response.aclose()
            raise

    async def aclose(self) -> None:
        await self.tls.aclose()
        await self.plain.aclose()
