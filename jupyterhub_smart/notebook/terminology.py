"""Codes into words: ``lookup(system, code)`` and ``expand(valueset_url, filter=None)``.

Both use the FHIR server's terminology operations (``CodeSystem/$lookup``,
``ValueSet/$expand``) when its CapabilityStatement declares them; a server
without them gets :class:`~.errors.TerminologyUnavailable` at once, saying so.
Answers are cached for the client's life (codes do not change within an
analysis), so mapping a column of codes costs one request per distinct code.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .errors import FHIRError

if TYPE_CHECKING:
    from .client import SMARTClient

__all__ = ["TerminologyCache"]

MAX_TEXT = 1000


class TerminologyCache:
    """Answers already received, per client."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, ...], Any] = {}
        self.lock = threading.Lock()


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise ValueError(f"{name} must be non-empty text of at most {MAX_TEXT} characters")
    return value


def _operation(
    client: SMARTClient, resource_type: str, name: str, params: list[tuple[str, str]]
) -> dict[str, Any]:
    client.capabilities.require_operation(resource_type, name)
    try:
        fetched = client.http.get(f"{resource_type}/${name}", params)
    except FHIRError as exc:
        client._emit_refused(exc, "operation", resource_type, params=tuple(params))
        raise
    client._emit(fetched, "operation", resource_type, params=tuple(params))
    return fetched.data


def lookup(client: SMARTClient, system: str, code: str) -> dict[str, Any]:
    """``{"system", "code", "display", "name", ...}`` of one code (FHIRError 404 if unknown)."""
    key = ("lookup", _text("system", system), _text("code", code))
    with client.terminology.lock:
        if key in client.terminology.items:
            return dict(client.terminology.items[key])
    data = _operation(client, "CodeSystem", "lookup", [("system", system), ("code", code)])
    result: dict[str, Any] = {"system": system, "code": code}
    for parameter in data.get("parameter") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            continue
        values = [v for k, v in parameter.items() if k.startswith("value")]
        if values and parameter["name"] not in ("system", "code"):
            result[parameter["name"]] = values[0]
    with client.terminology.lock:
        client.terminology.items[key] = result
    return dict(result)


def expand(
    client: SMARTClient, valueset_url: str, filter: str | None = None
) -> list[dict[str, Any]]:
    """The codes of a ValueSet (those matching ``filter``): ``[{"system", "code", "display"}]``."""
    params = [("url", _text("valueset_url", valueset_url))]
    if filter is not None:
        params.append(("filter", _text("filter", filter)))
    key = ("expand", *(v for _, v in params))
    with client.terminology.lock:
        if key in client.terminology.items:
            return [dict(c) for c in client.terminology.items[key]]
    data = _operation(client, "ValueSet", "expand", params)
    contains = (data.get("expansion") or {}).get("contains") or []
    codes = [
        {k: c.get(k) for k in ("system", "code", "display")}
        for c in contains
        if isinstance(c, dict) and c.get("code")
    ]
    with client.terminology.lock:
        client.terminology.items[key] = codes
    return [dict(c) for c in codes]
