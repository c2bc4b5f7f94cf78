"""A lean asyncio network backend for httpcore's plain-TCP (``http://``) connections.

httpcore's default backend on asyncio is anyio's. Each ``read`` there enters a
cancel scope (``fail_after``), asks sniffio which library runs, resumes the
transport's reading, waits on an event for one ``data_received``, and pauses
reading again: two ``epoll_ctl`` calls and a loop iteration per read. A page
of 1,000 Observations arrives in about 25 reads, plus those of the audit
post to the hub, and this machinery was the largest part of the proxy's CPU
per page that was not the proxy's own work.

Here a connection is a non-blocking socket: ``read`` calls ``recv`` and waits
for readability (``add_reader``, a timer for the timeout) only when nothing is
there yet; ``write`` calls ``send`` likewise. Nothing is buffered beyond the
kernel's socket buffers, so a slow reader still slows the EHR (flow control).
Timeouts are per call, as anyio's are; errors map to httpcore's exceptions,
which the callers already handle.

It serves plain TCP only. TLS origins (``https://``) keep httpcore's default
backend: :meth:`_SocketStream.start_tls` refuses, so a pool with this backend
must be used for ``http://`` URLs only (:class:`jupyterhub_smart.proxy.forward.Upstream`
and the recorder pick the pool by scheme). It needs a loop with
``add_reader``/``add_writer`` (asyncio's selector loop, tornado's, uvloop).
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import httpcore

__all__ = ["PlainTCPBackend"]

_Watch = Callable[..., Any]


def _settle(future: asyncio.Future[None], error: type[Exception] | None = None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error())


class _SocketStream(httpcore.AsyncNetworkStream):
    """One connected, non-blocking TCP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()

    async def _wait(
        self,
        add: _Watch,
        remove: _Watch,
        timeout: float | None,
        expired: type[Exception],
    ) -> None:
        """Until the socket is readable/writable (``add``: the loop's add_reader/add_writer)."""
        future: asyncio.Future[None] = self._loop.create_future()
        add(self._fd, _settle, future)
        timer = (
            self._loop.call_later(timeout, _settle, future, expired)
            if timeout is not None
            else None
        )
        try:
            await future
        finally:
            remove(self._fd)
            if timer is not None:
                timer.cancel()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while True:
            try:
                return self._sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise httpcore.ReadError(type(exc).__name__) from None
            await self._wait(
                self._loop.add_reader, self._loop.remove_reader, timeout, httpcore.ReadTimeout
            )

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise httpcore.WriteError(type(exc).__name__) from None
            view = view[sent:]
            if view:
                await self._wait(
                    self._loop.add_writer, self._loop.remove_writer, timeout, httpcore.WriteTimeout
                )

    async def aclose(self) -> None:
        self._sock.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("PlainTCPBackend serves http:// origins only")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "is_readable":
            # an idle keep-alive connection that is readable was closed (or sent junk)
            if self._sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


class PlainTCPBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend: plain TCP on the running asyncio loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                self._connect(loop, host, port, local_address, socket_options), timeout
            )
        except asyncio.TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {host} in time") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"{type(exc).__name__} connecting to {host}") from None

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> _SocketStream:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return _SocketStream(sock)
        raise error

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
