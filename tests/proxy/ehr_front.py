"""A fault-injecting front for the sandbox EHR: the faults a real EHR has, on demand.

The sandbox runs with ``--public-url`` pointing here, so every URL it publishes
(issuer, FHIR base, authorization endpoints) goes through this front, which
passes requests on to it unchanged except when a request's query carries
``x-fault=<name>`` (removed before passing on). A fake peer, allowed because
the sandbox does not misbehave on demand:

* ``close``: the connection is closed without an answer (EHR down);
* ``slow``: the answer starts after ``slow_seconds``;
* ``huge``: a 200 Bundle of ``huge_bytes`` streamed in 64 KiB chunks, with
  fullUrls and a next link on the FHIR base (for the rewrite);
* ``stall``: half a Bundle, then nothing (the EHR dies mid-answer);
* ``redirect``: 302 to ``other`` (another host, which records what it got);
* ``redirect-base``: 302 to the same path under the FHIR base without the fault;
* ``echo``: a JSON object of the headers this front received (what the proxy forwarded);
* ``gzip``, ``deflate``, ``br``: a Bundle of three Observations with fullUrls on the
  FHIR base, sent with that ``Content-Encoding`` (``deflate`` raw, without zlib's
  wrapper, as some servers send it; ``br`` is only named, so the proxy cannot read it).

Every request (method, path, headers) is kept in ``received``; the bearer
tokens seen go to the session's secret scan. With ``tls`` (a certificate and
its key, from :mod:`pki`) the front serves HTTPS, as an EHR whose certificate
comes from a hospital's internal CA does.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
from leak_scan import saw
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Front:
    port: int
    upstream: str
    other_port: int
    slow_seconds: float = 30.0
    huge_bytes: int = 100 * 1024 * 1024
    received: list[dict[str, Any]] = field(default_factory=list)
    other_received: list[dict[str, Any]] = field(default_factory=list)
    #: Paths whose answers were cut because the client went away.
    client_gone: list[str] = field(default_factory=list)
    tls: bool = False

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def other(self) -> str:
        return f"http://127.0.0.1:{self.other_port}/elsewhere"


class _Forward(RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, front: Front, http: httpx.AsyncClient) -> None:
        self.front = front
        self.http = http

    async def get(self, *_: str) -> None:
        await self._any()

    head = post = put = patch = delete = get

    async def _any(self) -> None:
        request = self.request
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            saw(auth[7:], kind="EHR access token")
        params = parse_qsl(request.query, keep_blank_values=True)
        fault = next((v for k, v in params if k == "x-fault"), None)
        kept = [(k, v) for k, v in params if k != "x-fault"]
        self.front.received.append(
            {
                "method": request.method,
                "path": request.path,
                "query": kept,
                "fault": fault,
                "headers": dict(request.headers.get_all()),
            }
        )
        base = f"{self.front.origin}/fhir"
        if fault == "close":
            self.request.connection.detach().close()  # type: ignore[union-attr]
            self._finished = True
            return
        if fault == "slow":
            await asyncio.sleep(self.front.slow_seconds)
        if fault in ("huge", "stall"):
            await self._bundle(base, stall=fault == "stall")
            return
        if fault == "redirect":
            self.redirect(self.front.other, status=302)
            return
        if fault == "redirect-base":
            self.redirect(f"{self.front.origin}{request.path}?{urlencode(kept)}", status=302)
            return
        if fault in ("gzip", "deflate", "br"):
            self._compressed(base, fault)
            return
        if fault == "echo":
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps({"headers": dict(request.headers.get_all())}))
            return
        url = f"{self.front.upstream}{request.path}" + (f"?{urlencode(kept)}" if kept else "")
        headers = {k: v for k, v in request.headers.get_all() if k.lower() not in HOP}
        upstream = await self.http.send(
            self.http.build_request(
                request.method or "GET", url, headers=headers, content=request.body or None
            ),
            stream=True,
        )
        try:
            self.set_status(upstream.status_code, reason=upstream.reason_phrase or "Unknown")
            self.clear_header("Content-Type")
            for name, value in upstream.headers.multi_items():
                if name.lower() not in HOP:
                    self.add_header(name, value)
            async for chunk in upstream.aiter_raw():
                self.write(chunk)
                await self.flush()
        finally:
            await upstream.aclose()
        self.finish()

    def _compressed(self, base: str, encoding: str) -> None:
        entries = [
            {
                "fullUrl": f"{base}/Observation/z{i}",
                "resource": {
                    "resourceType": "Observation",
                    "id": f"z{i}",
                    "status": "final",
                    "subject": {"reference": f"Patient/zip{i}"},
                },
            }
            for i in range(3)
        ]
        body = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "deflate":
            packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            body = packer.compress(body) + packer.flush()
        self.set_header("Content-Type", "application/fhir+json")
        self.set_header("Content-Encoding", encoding)
        self.finish(body)

    async def _bundle(self, base: str, *, stall: bool) -> None:
        self.set_header("Content-Type", "application/fhir+json")
        head = (
            orjson.dumps(
                {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "link": [{"relation": "next", "url": f"{base}/Observation?page=2"}],
                }
            )[:-1]
            + b',"entry":['
        )
        entry = (
            b'{"fullUrl":"' + base.encode() + b'/Observation/o%d","resource":{"resourceType":'
            b'"Observation","id":"o%d","status":"final","subject":{"reference":"Patient/huge"},'
            b'"valueString":"' + b"x" * 400 + b'"}}'
        )
        total = self.front.huge_bytes // 2 if stall else self.front.huge_bytes
        self.write(head)
        sent, n, chunk = len(head), 0, bytearray()
        try:
            while sent < total:
                piece = (b"," if n else b"") + entry.replace(b"%d", str(n).encode())
                chunk += piece
                n += 1
                if len(chunk) >= 65536:
                    self.write(bytes(chunk))
                    sent += len(chunk)
                    chunk.clear()
                    await self.flush()
            if stall:
                await asyncio.sleep(3600)
            self.write(bytes(chunk) + b"]}")
            self.finish()
        except StreamClosedError:
            self.front.client_gone.append(self.request.path)


class _Other(RequestHandler):
    def initialize(self, front: Front) -> None:
        self.front = front

    def get(self, *_: str) -> None:
        self.front.other_received.append(dict(self.request.headers.get_all()))
        self.finish(b"stolen")


@contextmanager
def run_front(
    port: int, upstream: str, other_port: int, *, tls: tuple[Path, Path] | None = None
) -> Iterator[Front]:
    """Serve the front (and the 'other host') on a thread until the block ends.

    ``tls``: (certificate, key) PEM files; the front then speaks HTTPS only.
    """
    front = Front(port, upstream.rstrip("/"), other_port, tls=tls is not None)
    context: ssl.SSLContext | None = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def start() -> None:
            http = httpx.AsyncClient(follow_redirects=False, timeout=120, trust_env=False)
            app = Application([(r".*", _Forward, {"front": front, "http": http})])
            other = Application([(r".*", _Other, {"front": front})])
            servers = []
            for application, p, ssl_options in ((app, port, context), (other, other_port, None)):
                server = HTTPServer(application, ssl_options=ssl_options)
                server.add_sockets(bind_sockets(p, "127.0.0.1"))
                servers.append(server)
            holder["servers"], holder["http"] = servers, http
            holder["stop"] = asyncio.Event()
            ready.set()
            await holder["stop"].wait()
            for server in servers:
                server.stop()
            await http.aclose()

        holder["loop"] = loop
        loop.run_until_complete(start())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield front
    finally:
        loop = holder["loop"]
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
