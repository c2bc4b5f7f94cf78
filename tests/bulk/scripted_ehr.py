"""A tiny real HTTP server that answers scripted responses, to play a misbehaving Bulk Data server.

The sandbox is strict and correct; the client's handling of *wrong* servers
(relative or foreign file URLs, files that disagree with their count, broken
lines, presigned redirects) needs a server that does those things. It records
every request's path and headers for the tests to inspect.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: (status, headers, body)
Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Scripted:
    """A running scripted server: set ``replies`` by path; read ``requests``."""

    origin: str = ""
    replies: dict[str, Reply] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@contextmanager
def scripted_server() -> Iterator[Scripted]:
    state = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state.requests.append(
                (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            )
            path = self.path.split("?", 1)[0]
            status, headers, body = state.replies.get(
                path, (404, {}, b'{"resourceType":"OperationOutcome"}')
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value.replace("{origin}", state.origin))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.replace(b"{origin}", state.origin.encode()))

        do_GET = _answer
        do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.origin = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
