"""The kick-off request: level, parameters, GET or POST, comma-joined or repeated values.

Servers disagree on parameter forms: some accept only comma-joined ``_type``
(repeating it is a 400 there), Bulk Data 4 drops comma-joining and prefers POST
with a ``Parameters`` body. :class:`ExportSpec` says what to export;
``param_style`` and ``method`` say how this server wants it. ``_outputFormat``
goes out as the full MIME type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin

import httpx
import orjson

from .errors import BudgetExceeded, BulkError
from .retry import Backoff, outcome_text, retry_after

OUTPUT_FORMAT = "application/fhir+ndjson"
#: Kick-offs refused with 429 (another export of this client running) are retried this often.
MAX_KICKOFF_RETRIES = 8
#: Parameters whose values are lists (comma-joined or repeated).
_LISTS = frozenset({"_type", "_elements", "_typeFilter", "includeAssociatedData"})


@dataclass
class ExportSpec:
    """What to export."""

    level: str = "system"  # "system", "patient" or "group"
    group: str | None = None
    types: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    type_filters: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    include_associated_data: list[str] = field(default_factory=list)
    organize_output_by: str | None = None
    allow_partial_manifests: bool = False
    #: ``comma`` (``_type=A,B``) or ``repeat`` (``_type=A&_type=B``).
    param_style: str = "comma"
    method: str = "GET"
    lenient: bool = False

    def path(self) -> str:
        """The kick-off path under the FHIR base."""
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        if self.level == "group" and self.group:
            return f"Group/{quote(self.group, safe='')}/$export"
        raise BulkError("a Group-level export needs a group id")

    def pairs(self) -> list[tuple[str, str]]:
        """The parameters as (name, value) pairs (``patient`` excluded).

        In comma style a list is one pair whose items are separated by NUL,
        which :meth:`query_string` turns into literal commas after encoding each.
        """
        pairs: list[tuple[str, str]] = [("_outputFormat", OUTPUT_FORMAT)]

        def many(name: str, values: list[str]) -> None:
            if not values:
                return
            if self.param_style == "repeat":
                pairs.extend((name, v) for v in values)
            else:
                pairs.append((name, "\x00".join(values)))

        many("_type", self.types)
        if self.since:
            pairs.append(("_since", self.since))
        if self.until:
            pairs.append(("_until", self.until))
        many("_elements", self.elements)
        many("_typeFilter", self.type_filters)
        many("includeAssociatedData", self.include_associated_data)
        if self.organize_output_by:
            pairs.append(("organizeOutputBy", self.organize_output_by))
        if self.allow_partial_manifests:
            pairs.append(("allowPartialManifests", "true"))
        return pairs

    def query_string(self) -> str:
        """The GET query, encoded here rather than by httpx so that list commas stay bare.

        Comma-joined values keep their separating commas literal; each value
        (and each ``_typeFilter`` query, so its own ``?``, ``&``, ``=`` and
        commas) is percent-encoded in full.
        """
        parts = []
        for name, value in self.pairs():
            if self.param_style == "comma" and name in _LISTS:
                items = value.split("\x00")
                encoded = ",".join(quote(item, safe="") for item in items)
            else:
                encoded = quote(value, safe="")
            parts.append(f"{name}={encoded}")
        return "&".join(parts)

    def parameters_resource(self) -> dict[str, Any]:
        """The POST body: a FHIR ``Parameters`` resource (one entry per value)."""
        params: list[dict[str, Any]] = []
        for name, value in self.pairs():
            if name == "_typeFilter":
                continue
            if name in _LISTS:
                value = ",".join(value.split("\x00"))
            kind = "valueInstant" if name in ("_since", "_until") else "valueString"
            if name == "allowPartialManifests":
                params.append({"name": name, "valueBoolean": True})
            else:
                params.append({"name": name, kind: value})
        params.extend({"name": "_typeFilter", "valueString": q} for q in self.type_filters)
        for patient in self.patients:
            reference = patient if patient.startswith("Patient/") else f"Patient/{patient}"
            params.append({"name": "patient", "valueReference": {"reference": reference}})
        return {"resourceType": "Parameters", "parameter": params}


def kickoff(
    http: httpx.Client,
    auth: httpx.Auth,
    fhir_url: str,
    spec: ExportSpec,
    *,
    deadline: float,
    sleep: Any = time.sleep,
) -> str:
    """Start the export; returns the absolute status URL. Retries 429 and 5xx a bounded number of times."""
    base = fhir_url.rstrip("/") + "/"
    url = urljoin(base, spec.path())
    prefer = "respond-async" + (", handling=lenient" if spec.lenient else "")
    headers = {"Accept": "application/fhir+json", "Prefer": prefer}
    method = "POST" if spec.patients else spec.method.upper()
    backoff = Backoff()
    for attempt in range(MAX_KICKOFF_RETRIES + 1):
        try:
            if method == "POST":
                response = http.post(
                    url,
                    content=orjson.dumps(spec.parameters_resource()),
                    headers={**headers, "Content-Type": "application/fhir+json"},
                    auth=auth,
                    follow_redirects=False,
                )
            else:
                response = http.get(
                    f"{url}?{spec.query_string()}",
                    headers=headers,
                    auth=auth,
                    follow_redirects=False,
                )
        except httpx.TransportError as exc:
            if attempt == MAX_KICKOFF_RETRIES:
                raise BulkError(f"the kick-off to {url} failed: {type(exc).__name__}") from None
            _wait(backoff.next(), deadline, sleep, "kick-off")
            continue
        if response.status_code == 202:
            location = response.headers.get("content-location")
            if not location:
                raise BulkError(
                    "the server accepted the export but sent no Content-Location status URL"
                )
            return urljoin(base, location)
        if response.status_code == 429 or response.status_code >= 500:
            if attempt == MAX_KICKOFF_RETRIES:
                break
            wait = retry_after(response.headers.get("retry-after")) or backoff.next()
            _wait(
                wait,
                deadline,
                sleep,
                "kick-off (the server is busy or has another export of this client)",
            )
            continue
        detail = outcome_text(response.content) or f"HTTP {response.status_code}"
        raise BulkError(
            f"the server refused the export kick-off (HTTP {response.status_code}): {detail}"
        )
    raise BulkError(
        f"the kick-off was refused {MAX_KICKOFF_RETRIES + 1} times (HTTP {response.status_code}); "
        "another export of this client may still be running at the server"
    )


def _wait(seconds: float, deadline: float, sleep: Any, what: str) -> None:
    if time.monotonic() + seconds > deadline:
        raise BudgetExceeded(f"the --timeout budget ends before the next {what} attempt")
    sleep(seconds)
