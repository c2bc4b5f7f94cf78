"""The completion manifest: checked, its ``link`` pages followed, its files given stable keys.

Every file URL must be absolute and on the FHIR server's origin (or an origin
the caller trusts): a manifest that points elsewhere would otherwise make the
client send its bearer token to a stranger. A relative URL is refused (the IG
requires absolute ones). Bulk Data 3.0 pages large manifests with
``link: [{relation: next}]``; every page is fetched and merged.

Files are identified by ``kind:type:n`` (the n-th file of that type and kind
in manifest order), not by URL: a re-fetched manifest has fresh, differently
signed links for the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from ..smart.fhir_rules import is_resource_type
from .errors import BulkError
from .retry import outcome_text

MAX_PAGES = 10_000
_KINDS = ("output", "deleted", "error")


@dataclass
class ManifestFile:
    """One file of the manifest."""

    key: str
    kind: str  # "output", "deleted" or "error"
    type: str
    url: str
    count: int | None


def origin(url: str) -> str:
    """``scheme://host:port`` of an absolute URL (default ports made explicit)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def on_trusted_origin(url: str, fhir_url: str, trusted: frozenset[str]) -> bool:
    """Whether ``url`` is on the FHIR server's origin or a trusted one (ports compared explicit)."""
    here = origin(url)
    return here == origin(fhir_url) or here in {origin(t) for t in trusted}


def check_url(url: Any, fhir_url: str, trusted: frozenset[str], what: str) -> str:
    """``url`` if it is absolute and on the FHIR server's origin or a trusted one; else BulkError."""
    if not isinstance(url, str) or not url:
        raise BulkError(f"the manifest's {what} has no url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BulkError(f"the manifest's {what} URL {url[:120]!r} is not absolute; refusing it")
    if not on_trusted_origin(url, fhir_url, trusted):
        raise BulkError(
            f"the manifest's {what} URL is on {origin(url)}, not on the FHIR server's origin "
            f"{origin(fhir_url)}; refusing to send it a token (trust it with --trust-origin)"
        )
    return url


def files_of(
    pages: list[dict[str, Any]], fhir_url: str, trusted: frozenset[str]
) -> list[ManifestFile]:
    """Every file of every page, checked, with stable keys."""
    seen: dict[tuple[str, str], int] = {}
    files = []
    for page in pages:
        for kind in _KINDS:
            entries = page.get(kind) or []
            if not isinstance(entries, list):
                raise BulkError(f"the manifest's {kind} is not a list")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                    raise BulkError(f"a manifest {kind} entry has no type")
                resource_type = entry["type"]
                if not is_resource_type(resource_type):
                    raise BulkError(
                        f"the manifest names an invalid resource type {resource_type[:40]!r}"
                    )
                url = check_url(entry.get("url"), fhir_url, trusted, f"{kind} file")
                count = entry.get("count")
                if count is not None and (
                    isinstance(count, bool) or not isinstance(count, int) or count < 0
                ):
                    raise BulkError(
                        f"the manifest's count for {resource_type} is not a whole number"
                    )
                n = seen.get((kind, resource_type), 0) + 1
                seen[(kind, resource_type)] = n
                files.append(
                    ManifestFile(f"{kind}:{resource_type}:{n}", kind, resource_type, url, count)
                )
    return files


def fetch_pages(
    http: httpx.Client,
    auth: httpx.Auth,
    first: dict[str, Any],
    fhir_url: str,
    trusted: frozenset[str],
) -> list[dict[str, Any]]:
    """The first manifest page and every page its ``link`` ``next`` chain leads to."""
    check_first(first)
    pages = [first]
    page = first
    while True:
        links = page.get("link") or []
        next_url = next(
            (
                link.get("url")
                for link in links
                if isinstance(link, dict) and link.get("relation") == "next"
            ),
            None,
        )
        if next_url is None:
            return pages
        if len(pages) >= MAX_PAGES:
            raise BulkError(f"the manifest has more than {MAX_PAGES} pages")
        url = check_url(next_url, fhir_url, trusted, "next page")
        response = http.get(
            url, headers={"Accept": "application/json"}, auth=auth, follow_redirects=False
        )
        if response.status_code != 200:
            detail = outcome_text(response.content) or f"HTTP {response.status_code}"
            raise BulkError(f"fetching manifest page {len(pages) + 1} failed: {detail}")
        try:
            page = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BulkError(f"manifest page {len(pages) + 1} is not JSON") from None
        if not isinstance(page, dict):
            raise BulkError(f"manifest page {len(pages) + 1} is not a JSON object")
        pages.append(page)


def check_first(manifest: dict[str, Any]) -> None:
    """The fields every manifest must have (``transactionTime``, ``request``, ``output``)."""
    for name in ("transactionTime", "request"):
        if not isinstance(manifest.get(name), str):
            raise BulkError(f"the manifest has no {name}; it is not a Bulk Data manifest")
    if not isinstance(manifest.get("output"), list):
        raise BulkError("the manifest has no output list; it is not a Bulk Data manifest")
    if not isinstance(manifest.get("requiresAccessToken"), bool):
        raise BulkError("the manifest's requiresAccessToken is not true or false")
