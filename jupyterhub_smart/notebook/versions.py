"""History, vread and conditional reads: what changed, and re-reads that cost a 304.

``history(type, id=None, since=None)`` pages through ``_history`` (of one
resource, or of a type) newest first; its frame holds every version still
present (deletions carry no resource) and ``changes()`` lists each version
with its method (POST, PUT, DELETE) and time. ``vread`` reads one version.

Reads are conditional: the client keeps the ``ETag`` and body of the last
read of each resource (up to :data:`ETAG_CACHE_SIZE`), sends
``If-None-Match``, and on ``304 Not Modified`` returns its copy. A re-read of
an unchanged resource is then one small response.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from .errors import FHIRError
from .search import SearchResult
from .searchcontrols import range_params

if TYPE_CHECKING:
    import pandas as pd

    from .client import SMARTClient

__all__ = ["ETAG_CACHE_SIZE", "ETagCache", "HistoryResult"]

ETAG_CACHE_SIZE = 1024


class ETagCache:
    """The last ETag and body per ``(type, id)``, least recently used dropped first."""

    def __init__(self, size: int = ETAG_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], tuple[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[str, str], etag: str | None, resource: dict[str, Any]) -> None:
        with self._lock:
            if not etag:
                self._items.pop(key, None)
                return
            self._items[key] = (etag, copy.deepcopy(resource))
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._items.pop(key, None)


class HistoryResult(SearchResult):
    """A ``_history`` Bundle's versions: iterate, ``to_pandas()``, ``changes()``."""

    def _page_resources(self, bundle: dict[str, Any], url: str) -> Iterator[dict[str, Any]]:
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == self.resource_type:
                yield resource

    def changes(self) -> pd.DataFrame:
        """One row per version: ``id``, ``version``, ``method``, ``last_modified``, ``status``."""
        import pandas as pd

        rows = []
        for bundle in self.pages():
            for entry in bundle.get("entry") or []:
                request = entry.get("request") or {}
                response = entry.get("response") or {}
                resource = entry.get("resource") or {}
                url = str(request.get("url") or entry.get("fullUrl") or "")
                rows.append(
                    {
                        "id": resource.get("id") or url.rstrip("/").rsplit("/", 1)[-1],
                        "version": str(response.get("etag", "")).removeprefix("W/").strip('"')
                        or (resource.get("meta") or {}).get("versionId"),
                        "method": request.get("method"),
                        "last_modified": response.get("lastModified")
                        or (resource.get("meta") or {}).get("lastUpdated"),
                        "status": response.get("status"),
                    }
                )
        frame = pd.DataFrame(rows, columns=["id", "version", "method", "last_modified", "status"])
        frame["last_modified"] = pd.to_datetime(frame["last_modified"], utc=True, format="ISO8601")
        return frame


def history(
    client: SMARTClient,
    resource_type: str,
    resource_id: str | None,
    since: str | date | datetime | None,
) -> HistoryResult:
    from .client import _check_id, _check_type

    _check_type(resource_type)
    info = client.provider.get()
    if resource_id is not None:
        _check_id(resource_id)
        client.capabilities.require_interaction(resource_type, "history-instance")
        client._check(info, resource_type, "r", resource_id=resource_id)
        path, action = f"{resource_type}/{resource_id}/_history", "history-instance"
    else:
        client.capabilities.require_interaction(resource_type, "history-type")
        client._check(info, resource_type, "s")
        path, action = f"{resource_type}/_history", "history-type"
    params = range_params("_since", since) if since is not None else []
    if client.page_size is not None:
        params.append(("_count", str(client.page_size)))
    return HistoryResult(
        client._search_get(resource_type, params),
        resource_type,
        params,
        progress=client.progress,
        max_pages=client.max_pages,
        path=path,
        action=action,
    )


def vread(
    client: SMARTClient, resource_type: str, resource_id: str, version: str | int
) -> dict[str, Any]:
    from .client import _check_id, _check_type

    _check_type(resource_type)
    _check_id(resource_id)
    _check_id(str(version))
    client.capabilities.require_interaction(resource_type, "vread")
    client._check(client.provider.get(), resource_type, "r", resource_id=resource_id)
    try:
        fetched = client.http.get(f"{resource_type}/{resource_id}/_history/{version}")
    except FHIRError as exc:
        client._emit_refused(exc, "vread", resource_type, resource_id=resource_id)
        raise
    client._emit(fetched, "vread", resource_type, resource_id=resource_id)
    return fetched.data


def conditional_read(client: SMARTClient, resource_type: str, resource_id: str) -> dict[str, Any]:
    """``read`` with ``If-None-Match``: a 304 returns the cached copy."""
    key = (resource_type, resource_id)
    cached = client.etags.get(key)
    headers = {"If-None-Match": cached[0]} if cached else None
    try:
        fetched = client.http.get(f"{resource_type}/{resource_id}", headers=headers)
    except FHIRError as exc:
        client.etags.drop(key)
        client._emit_refused(exc, "read", resource_type, resource_id=resource_id)
        raise
    client._emit(fetched, "read", resource_type, resource_id=resource_id)
    if fetched.status == 304 and cached is not None:
        return copy.deepcopy(cached[1])
    client.etags.put(key, fetched.headers.get("etag"), fetched.data)
    return fetched.data
