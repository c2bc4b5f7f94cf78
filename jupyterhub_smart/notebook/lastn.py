"""``observations(..., lastn=N)``: the N most recent values per code.

Where the server declares ``Observation/$lastn`` the work is the server's
(one request); elsewhere the client searches newest first and keeps the first
N per code itself. ``result.meta`` says which (``{"lastn": N, "source":
"server" | "client"}``), since the two can differ on servers whose ``$lastn``
groups codes differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .http import Fetched
from .search import SearchResult
from .tokens import TokenInfo

if TYPE_CHECKING:
    from .client import SMARTClient

__all__ = ["observations_lastn"]


def _code_key(resource: dict[str, Any]) -> tuple[str, str]:
    value = resource.get("code")
    code: dict[str, Any] = value if isinstance(value, dict) else {}
    codings = code.get("coding") or [{}]
    first = codings[0] if isinstance(codings[0], dict) else {}
    return str(first.get("system", "")), str(first.get("code", code.get("text", "")))


def observations_lastn(
    client: SMARTClient,
    info: TokenInfo,
    params: list[tuple[str, str]],
    n: int,
    progress: bool | None,
) -> SearchResult:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100:
        raise ValueError("lastn must be a whole number from 1 to 100")
    base = [(k, v) for k, v in params if k not in ("_sort", "_count")]
    if client.capabilities.has_operation("Observation", "lastn"):
        server_params = [*base, ("max", str(n))]
        result = SearchResult(
            client._search_get("Observation", server_params),
            "Observation",
            server_params,
            progress=False,
            max_pages=client.max_pages,
            path="Observation/$lastn",
            action="operation",
        )
        result.meta = {"lastn": n, "source": "server"}
        return result
    newest = [*base, ("_sort", "-date")]
    if client.page_size is not None:
        newest.append(("_count", str(client.page_size)))
    source = SearchResult(
        client._search_get("Observation", newest),
        "Observation",
        newest,
        progress=progress,
        max_pages=client.max_pages,
    )
    kept: list[dict[str, Any]] | None = None

    def get(path: str, request_params: list[tuple[str, str]] | None, action: str) -> Fetched:
        nonlocal kept
        if kept is None:
            counts: dict[tuple[str, str], int] = {}
            chosen = []
            for resource in source:
                key = _code_key(resource)
                if counts.get(key, 0) < n:
                    counts[key] = counts.get(key, 0) + 1
                    chosen.append(resource)
            kept = chosen[::-1]  # oldest first, like observations()
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(kept),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in kept],
        }
        return Fetched(bundle, f"(last {n} per code, chosen in the client)", 200, info)

    result = SearchResult(get, "Observation", params, progress=False, prefetch=False)
    result.meta = {
        "lastn": n,
        "source": "client",
        "reason": "the server does not declare Observation/$lastn",
    }
    return result
