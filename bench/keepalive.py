"""A lean HTTP/1.1 GET client for open-loop load: raw asyncio streams, keep-alive.

httpx spent 3 to 10 ms of CPU per request in the token API benchmarks, more than
the hub, and on two cores the load generator became what was measured. This
client only writes a prepared request and reads a Content-Length answer, reusing
an idle connection when there is one and opening another when there is none.
"""

from __future__ import annotations

import asyncio
import re

import httpx

__all__ = ["KeepAlivePool", "get_request"]

_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def get_request(url: str, token: str) -> bytes:
    """The bytes of ``GET url`` with a JupyterHub API token."""
    parts = httpx.URL(url)
    return (
        f"GET {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.host}:{parts.port or 80}\r\n"
        f"Authorization: token {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()


class KeepAlivePool:
    """Connections to one host and port; :meth:`send` answers (status line and head, body)."""

    def __init__(self, url: str) -> None:
        parts = httpx.URL(url)
        self.host, self.port = parts.host, parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._opened: list[asyncio.StreamWriter] = []

    async def send(self, request: bytes) -> tuple[bytes, bytes]:
        """Send ``request``; (head, body). Raises OSError, EOFError, ValueError on failure."""
        writer = None
        try:
            if self._idle:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                self._opened.append(writer)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            if length is None:
                raise ValueError("no Content-Length")
            body = await reader.readexactly(int(length.group(1)))
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError):
            if writer is not None:
                writer.close()
            raise
        self._idle.append((reader, writer))
        return head, body

    def close(self) -> None:
        for writer in self._opened:
            writer.close()
