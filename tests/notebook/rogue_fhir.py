"""A FHIR server over real HTTP that misbehaves the way a test tells it to.

A fake peer, allowed because it produces what the sandbox never does: a
Bundle whose pages end before its ``total``, a page of hundreds of megabytes
(with or without ``Content-Length``), ``next`` links minted forever, and
``next`` links that climb out of the FHIR base in spellings only some servers
decode. It is a real socket server, so the client's streaming, connection
handling and URL encoding run exactly as against a real FHIR server. Every
request path is kept as it arrived on the wire (``paths``), and the bytes a
response managed to send before the client hung up (``sent``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Reply:
    """One answer: a JSON body, or raw chunks (``length`` sets Content-Length, None streams)."""

    status: int = 200
    body: Any = None
    chunks: Iterable[bytes] | None = None
    length: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


Answer = Callable[[str], Reply]


@dataclass
class RogueFHIR:
    """The server's state: set ``answer`` (path with query -> :class:`Reply`) before a request."""

    base: str
    answer: Answer = field(default=lambda path: Reply(404, {"resourceType": "OperationOutcome"}))
    paths: list[str] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def bundle(
    ids: Iterable[str], *, total: int | None = None, next_url: str | None = None
) -> dict[str, Any]:
    """A searchset page of Patients ``ids``."""
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": i}, "search": {"mode": "match"}}
            for i in ids
        ],
        "link": [{"relation": "next", "url": next_url}] if next_url else [],
    }
    if total is not None:
        body["total"] = total
    return body


def filler(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """``size`` bytes of a JSON Bundle that never closes (only its first bytes parse)."""
    head = b'{"resourceType":"Bundle","type":"searchset","entry":['
    yield head
    block = b" " * chunk
    left = size - len(head)
    while left > 0:
        yield block[: min(chunk, left)]
        left -= chunk


@contextmanager
def run_rogue_fhir() -> Iterator[RogueFHIR]:
    """Serve on a free loopback port until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.paths.append(self.path)
            reply = state.answer(self.path)
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/fhir+json")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.chunks is None:
                data = orjson.dumps(reply.body)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if reply.length is not None:
                self.send_header("Content-Length", str(reply.length))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            try:
                for piece in reply.chunks:
                    self.wfile.write(piece)
                    with state.lock:
                        state.sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = RogueFHIR(base=f"http://127.0.0.1:{server.server_address[1]}/fhir")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
