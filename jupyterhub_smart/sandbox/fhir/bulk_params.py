"""Kick-off parameters of ``$export``, from a GET query or a POST ``Parameters`` body, checked strictly.

The sandbox answers 400 with an OperationOutcome to anything it does not
support, as the Bulk Data IG tells a server to, unless the client sent
``Prefer: handling=lenient``: then unsupported parameters are ignored and
listed in the kick-off's informational OperationOutcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

from .outcome import FHIRError
from .search import SEARCH_PARAMS, Clause, parse_search

#: ``_outputFormat`` values accepted: the full MIME type and the IG's abbreviations.
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
#: Types a Patient- or Group-level export covers (those with a patient compartment here).
COMPARTMENT_TYPES = ("Patient", "Observation", "Condition", "Encounter", "MedicationRequest")
#: Types a system-level export covers by default.
SYSTEM_TYPES = tuple(SEARCH_PARAMS)
_ELEMENT = re.compile(r"^(?:[A-Z][A-Za-z]{0,63}\.)?[a-z][A-Za-z0-9]{0,63}$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_PATIENT_REF = re.compile(r"^Patient/([A-Za-z0-9\-.]{1,64})$")
_KNOWN = frozenset(
    {
        "_outputFormat",
        "_since",
        "_until",
        "_type",
        "_elements",
        "_typeFilter",
        "patient",
        "includeAssociatedData",
        "organizeOutputBy",
        "allowPartialManifests",
    }
)
_UNSUPPORTED = ("includeAssociatedData", "organizeOutputBy")


@dataclass
class ExportRequest:
    """A validated kick-off."""

    level: str  # "system", "patient" or "group"
    types: list[str]
    since: datetime | None = None
    until: datetime | None = None
    elements: list[str] = field(default_factory=list)
    #: Per type, alternative filter sets (OR-ed); each set's clauses are AND-ed.
    type_filters: dict[str, list[list[Clause]]] = field(default_factory=dict)
    patients: list[str] = field(default_factory=list)
    allow_partial_manifests: bool = False
    #: Parameters ignored under ``handling=lenient``.
    ignored: list[str] = field(default_factory=list)
    #: Types named in ``_type`` (as opposed to the level's default set).
    explicit_types: bool = False


def _instant(name: str, value: str) -> datetime:
    if not _INSTANT.match(value):
        raise FHIRError(
            400, f"{name} must be a FHIR instant with a time zone, like 2025-01-01T00:00:00Z"
        )
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _comma_values(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def pairs_from_parameters(body: Any) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a POST kick-off's ``Parameters`` resource."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError(400, "a POST kick-off body must be a FHIR Parameters resource")
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise FHIRError(400, "Parameters.parameter must be a list")
    pairs: list[tuple[str, str]] = []
    for index, parameter in enumerate(parameters):
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise FHIRError(400, f"Parameters.parameter[{index}] needs a name")
        values = [(k, v) for k, v in parameter.items() if k.startswith("value")]
        if len(values) != 1:
            raise FHIRError(400, f"Parameters.parameter[{index}] needs exactly one value[x]")
        key, value = values[0]
        if key == "valueReference":
            reference = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(reference, str):
                raise FHIRError(
                    400, f"Parameters.parameter[{index}].valueReference needs reference"
                )
            value = reference
        elif key == "valueBoolean":
            if not isinstance(value, bool):
                raise FHIRError(400, f"Parameters.parameter[{index}].valueBoolean is not a boolean")
            value = "true" if value else "false"
        elif not isinstance(value, str):
            raise FHIRError(400, f"Parameters.parameter[{index}].{key} is not a string")
        pairs.append((parameter["name"], value))
    return pairs


def parse_export(
    level: str,
    pairs: list[tuple[str, str]],
    *,
    lenient: bool,
    via_post: bool,
    fhir_base: str,
    reject_repeated: bool = False,
) -> ExportRequest:
    """Check every kick-off parameter; ``FHIRError(400)`` for the first problem."""
    grouped: dict[str, list[str]] = {}
    ignored: list[str] = []
    for name, value in pairs:
        if name not in _KNOWN:
            if lenient:
                ignored.append(name)
                continue
            raise FHIRError(
                400,
                f"unknown $export parameter {name[:64]!r}; supported: {', '.join(sorted(_KNOWN))}",
            )
        grouped.setdefault(name, []).append(value)
    for name in _UNSUPPORTED:
        if name in grouped:
            if not lenient:
                raise FHIRError(
                    400,
                    f"{name} is not supported by this server; resubmit without it "
                    "(or with Prefer: handling=lenient)",
                    code="not-supported",
                )
            ignored.append(name)
            del grouped[name]
    for name in ("_outputFormat", "_since", "_until", "allowPartialManifests"):
        if len(grouped.get(name, [])) > 1:
            raise FHIRError(400, f"{name} may be given only once")
    if reject_repeated and len(grouped.get("_type", [])) > 1:
        raise FHIRError(400, "_type may be given only once: join the types with commas")

    fmt = grouped.get("_outputFormat", ["application/fhir+ndjson"])[0]
    if fmt not in OUTPUT_FORMATS:
        raise FHIRError(
            400,
            f"_outputFormat {fmt[:64]!r} is not supported; use application/fhir+ndjson",
            code="not-supported",
        )
    default_types = SYSTEM_TYPES if level == "system" else COMPARTMENT_TYPES
    types = _comma_values(grouped.get("_type", []))
    for resource_type in types:
        if resource_type not in default_types:
            raise FHIRError(
                400,
                f"_type {resource_type[:64]!r} cannot be exported at {level} level; "
                f"supported: {', '.join(default_types)}",
                code="not-supported",
            )
    request = ExportRequest(
        level=level,
        types=list(dict.fromkeys(types)) or list(default_types),
        explicit_types=bool(types),
        ignored=ignored,
    )
    if "_since" in grouped:
        request.since = _instant("_since", grouped["_since"][0])
    if "_until" in grouped:
        request.until = _instant("_until", grouped["_until"][0])
    for element in _comma_values(grouped.get("_elements", [])):
        if not _ELEMENT.match(element):
            raise FHIRError(
                400, f"_elements entry {element[:64]!r} is not [Type.]element (root elements only)"
            )
        request.elements.append(element)
    for query in _comma_values(grouped.get("_typeFilter", [])):
        _add_type_filter(request, unquote(query), fhir_base)
    partial = grouped.get("allowPartialManifests", ["false"])[0]
    if partial not in ("true", "false"):
        raise FHIRError(400, "allowPartialManifests must be true or false")
    request.allow_partial_manifests = partial == "true"
    if "patient" in grouped:
        if not via_post:
            raise FHIRError(400, "the patient parameter is accepted in a POST kick-off only")
        if level == "system":
            raise FHIRError(400, "the patient parameter does not apply to a system-level export")
        for reference in grouped["patient"]:
            match = _PATIENT_REF.match(reference)
            if not match:
                raise FHIRError(400, f"patient {reference[:80]!r} is not a Patient/<id> reference")
            request.patients.append(match[1])
    return request


def _add_type_filter(request: ExportRequest, query: str, fhir_base: str) -> None:
    resource_type, sep, params = query.partition("?")
    if not sep or resource_type not in SEARCH_PARAMS:
        raise FHIRError(400, f"_typeFilter {query[:80]!r} is not Type?search-parameters")
    if request.explicit_types and resource_type not in request.types:
        raise FHIRError(400, f"_typeFilter names {resource_type}, which is not in _type")
    pairs = parse_qsl(params, keep_blank_values=True)
    for name, _ in pairs:
        if name.startswith("_") and name != "_id":
            raise FHIRError(400, f"_typeFilter may not use {name[:32]!r} (search parameters only)")
    search = parse_search(resource_type, pairs, fhir_base)
    request.type_filters.setdefault(resource_type, []).append(search.filters)
