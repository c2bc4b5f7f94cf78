"""Header allow-lists, both ways: only what FHIR needs crosses the proxy.

Towards the EHR: content negotiation, conditional-request, ``Prefer`` and
``Range`` (Bulk Data file downloads) headers; never the caller's ``Authorization`` (the proxy sets the EHR token),
cookies, ``Host`` or forwarding headers a kernel could use to pose as someone
else. Towards the caller: the FHIR metadata headers (``ETag``,
``Last-Modified``, ``Location`` and ``Content-Location`` rewritten to the
proxy, ``Retry-After`` and Bulk Data's ``X-Progress``...); never
``Set-Cookie``, ``WWW-Authenticate`` (its ``error_description`` can describe the
EHR token) or server internals. ``Content-Length`` and ``Content-Encoding``
are not passed either: the proxy decodes and may rewrite the body, and sends it
chunked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

__all__ = ["REQUEST_HEADERS", "RESPONSE_HEADERS", "request_headers", "response_headers"]

REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-none-exist",
        "prefer",
        "range",
        "x-request-id",
    }
)

RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-language",
        "etag",
        "last-modified",
        "location",
        "content-location",
        "retry-after",
        "x-progress",
        "expires",
        "cache-control",
        "x-request-id",
        "link",
        "accept-ranges",
        "content-range",
    }
)

#: Response headers holding URLs of the EHR that are rewritten to the proxy.
URL_HEADERS = frozenset({"location", "content-location", "link"})

_MAX_VALUE = 8192


def request_headers(incoming: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The caller's headers that may go to the EHR (repeats joined by ``, ``)."""
    out: dict[str, str] = {}
    for name, value in incoming:
        lowered = name.lower()
        if lowered in REQUEST_HEADERS and len(value) <= _MAX_VALUE:
            out[lowered] = f"{out[lowered]}, {value}" if lowered in out else value
    return out


def response_headers(
    upstream: Iterable[tuple[str, str]], rewrite: Callable[[str], str]
) -> list[tuple[str, str]]:
    """The EHR's headers that may go to the caller, URLs of the base rewritten."""
    out: list[tuple[str, str]] = []
    for name, value in upstream:
        lowered = name.lower()
        if lowered not in RESPONSE_HEADERS or len(value) > _MAX_VALUE:
            continue
        if any(c in value for c in "\r\n\x00"):
            continue
        out.append((name, rewrite(value) if lowered in URL_HEADERS else value))
    return out


def header_map(pairs: Iterable[tuple[str, str]]) -> Mapping[str, str]:
    """Lower-cased name -> last value (for reading one header from a list)."""
    return {name.lower(): value for name, value in pairs}
