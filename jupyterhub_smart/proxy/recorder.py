"""The proxy's records go to the hub, which appends them to its own audit chain.

The hub keeps one hash-chained log with one writer; a second chain beside it
would be a second accounting that every audit tool (query, report, admin page,
alerts, sinks, checkpoints, retention) would have to merge. So the proxy
writes nothing itself: :meth:`HubRecorder.record` posts the record to
``POST /hub/api/smart/proxy-records`` (:mod:`jupyterhub_smart.hub.proxy_records`)
with the proxy's own service token and returns once the hub says it is
durable. Fail closed: if the hub does not confirm, :class:`AuditUnavailable`
is raised and the caller's answer is cut before its last bytes.

The first post authenticates with the proxy's JupyterHub service token; the
hub's answer carries a record key (``X-SMART-Proxy-Record-Key``), and later
posts go to ``.../proxy-records/keyed`` with it, which spares the hub a token
lookup per post. A hub that restarted no longer knows the key (403): the
recorder goes back to the service token once, at once.

Posts go through httpcore (httpx's transport) directly: a post is a small,
fixed request to the hub, and httpx's client layer (URL merging, cookies,
auth and redirect hooks) was half of its cost in the proxy. A hub API on plain
HTTP (the usual, on the hub's own network) is reached through
:class:`.netio.PlainTCPBackend`, which spares anyio's per-read machinery.

Group commit across requests: records that arrive while a post is in flight
wait and go together in the next post (at most :data:`MAX_BATCH`), where the
hub's log writes them with one sync. At most one post is in flight, so under
load a post carries many records and the hub sees few requests.

After a failure the recorder is *unhealthy*: before forwarding a request the
proxy calls :meth:`HubRecorder.ready`, which asks the hub (an empty post) at
most once per :data:`PROBE_INTERVAL` and refuses (503) until the hub answers,
so no EHR data is fetched for an answer that could not be recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpcore
import orjson

from ..audit import AuditUnavailable
from .netio import PlainTCPBackend

__all__ = ["RECORD_KEY_HEADER", "HubRecorder"]

log = logging.getLogger(__name__)

#: Header of the hub's record key (jupyterhub_smart.hub.proxy_records).
RECORD_KEY_HEADER = "X-SMART-Proxy-Record-Key"
_KEY_HEADER = RECORD_KEY_HEADER.encode()
_KEY_HEADER_LOWER = _KEY_HEADER.lower()
#: Records in one post at most.
MAX_BATCH = 200
#: Seconds between probes of an unhealthy hub (requests meanwhile get 503 at once).
PROBE_INTERVAL = 1.0


class HubRecorder:
    """Send records to the hub's audit chain, batched, one post in flight."""

    def __init__(self, hub_api_url: str, service_token: str, timeout: float) -> None:
        self.url = f"{hub_api_url}/smart/proxy-records"
        self.keyed_url = f"{self.url}/keyed"
        self.http = httpcore.AsyncConnectionPool(
            max_connections=4,
            network_backend=PlainTCPBackend() if self.url.startswith("http://") else None,
        )
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._headers = [
            (b"Authorization", f"token {service_token}".encode()),
            (b"Content-Type", b"application/json"),
        ]
        self._key: bytes | None = None
        self._queue: list[tuple[Mapping[str, Any], asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._failed_at: float | None = None
        self._probe: asyncio.Future[bool] | None = None
        #: Posts sent to the hub (for logs and tests).
        self.posts = 0

    @property
    def healthy(self) -> bool:
        """The last post (or probe) reached the hub and was recorded."""
        return self._failed_at is None

    async def record(self, event: Mapping[str, Any]) -> None:
        """Return once the hub holds ``event`` durably; else :class:`AuditUnavailable`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((event, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_all())
        await future

    async def ready(self) -> bool:
        """True if records can be written now (asks the hub after a failure, rate-limited)."""
        if self._failed_at is None:
            return True
        if time.monotonic() - self._failed_at < PROBE_INTERVAL:
            return False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._post([]))
        return await asyncio.shield(self._probe)

    async def _send_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                ok = await self._post([event for event, _ in batch])
            except Exception:  # whatever it was, these records are not confirmed
                log.exception("FHIR proxy: unexpected error posting records to the hub")
                ok = self._failed("could not be posted to")
            for _, future in batch:
                if future.done():
                    continue
                if ok:
                    future.set_result(None)
                else:
                    future.set_exception(
                        AuditUnavailable("the hub did not confirm the proxy's audit record")
                    )

    async def _post(self, events: list[Mapping[str, Any]]) -> bool:
        """Post ``events``; True once the hub confirmed them (never raises)."""
        self.posts += 1
        body = orjson.dumps({"events": events})
        try:
            status = 0
            if self._key is not None:
                status = await self._send(
                    self.keyed_url,
                    [(_KEY_HEADER, self._key), (b"Content-Type", b"application/json")],
                    body,
                )
                if status == 403:  # a restarted hub: authenticate again
                    self._key, status = None, 0
            if not status:
                status = await self._send(self.url, self._headers, body, keep_key=True)
        except (
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.ProtocolError,
            httpcore.ConnectionNotAvailable,
        ) as exc:
            return self._failed(f"unreachable ({type(exc).__name__})")
        if status not in (200, 201):
            return self._failed(f"answered {status}")
        if self._failed_at is not None:
            log.warning("FHIR proxy: the hub records again; forwarding resumes")
        self._failed_at = None
        return True

    async def _send(
        self, url: str, headers: list[tuple[bytes, bytes]], body: bytes, *, keep_key: bool = False
    ) -> int:
        """POST ``body``; the status (the answer's body is read and dropped)."""
        answer = await self.http.request(
            "POST", url, headers=headers, content=body, extensions=self._extensions
        )
        if keep_key:
            self._key = next((v for k, v in answer.headers if k.lower() == _KEY_HEADER_LOWER), None)
        return int(answer.status)

    async def aclose(self) -> None:
        await self.http.aclose()

    def _failed(self, why: str) -> bool:
        if self._failed_at is None:
            log.error("FHIR proxy: the hub's audit trail %s: forwarding nothing (fail closed)", why)
        self._failed_at = time.monotonic()
        return False
