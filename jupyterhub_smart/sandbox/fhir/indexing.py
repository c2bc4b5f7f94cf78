"""Search-index columns of a resource a client writes: compartment, date range, tokens.

The generator (:mod:`.synthetic`) emits these with each row; a resource sent by
a client gets the same columns here, so that a created Observation is found
by ``code``, ``category``, ``date`` and ``patient`` like a generated one, and
lands in the right patient compartment for the scope checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .outcome import FHIRError
from .search import SEARCH_PARAMS, parse_date
from .synthetic import normalise_text

GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
#: Where each type keeps the element its ``date`` (``birthdate``) parameter searches.
DATE_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectiveInstant", "effectivePeriod"),
    "Encounter": ("period",),
    "Patient": ("birthDate",),
    "Condition": ("onsetDateTime", "onsetPeriod", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "RiskAssessment": ("occurrenceDateTime", "occurrencePeriod"),
}
#: Where each type keeps its ``code`` parameter's CodeableConcept.
CODE_ELEMENTS = {
    "Observation": "code",
    "Condition": "code",
    "MedicationRequest": "medicationCodeableConcept",
    "RiskAssessment": "code",
}


_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?$")


def named_patients(resource: Any) -> set[str | None]:
    """Every patient a resource names: Patient references anywhere, relative or absolute.

    A contained Patient counts as an unknown patient (``None``), so that a
    patient-scoped token cannot slip another person into its event that way.
    """
    found: set[str | None] = set()
    stack = [resource]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str):
                match = _PATIENT_REFERENCE.search(reference)
                if match:
                    found.add(match.group(1))
            if item is not resource and item.get("resourceType") == "Patient":
                found.add(None)
            stack.extend(item.values())
    return found


@dataclass(frozen=True)
class Indexed:
    """What the ``resources`` and ``tokens`` tables hold beside a resource's JSON."""

    patient: str | None
    date_start: int | None
    date_end: int | None
    tokens: tuple[tuple[str, str, str], ...]


def reference_id(reference: Any, resource_type: str, fhir_base: str) -> str | None:
    """The id in a ``Type/id`` (or ``{base}/Type/id``) reference to ``resource_type``."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    if text.startswith(fhir_base + "/"):
        text = text[len(fhir_base) + 1 :]
    kind, _, rest = text.partition("/")
    if kind != resource_type or not rest:
        return None
    return rest.split("/_history/", 1)[0]


def compartment_patient(resource: dict[str, Any], fhir_base: str) -> str | None:
    """The Patient whose compartment holds ``resource`` (its own id for a Patient)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for element in ("subject", "patient"):
        found = reference_id(resource.get(element), "Patient", fhir_base)
        if found is not None:
            return found
    return None


def _codings(concepts: Any) -> Iterator[tuple[str, str]]:
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                system = coding.get("system")
                yield (system if isinstance(system, str) else ""), coding["code"]


def _date_range(resource: dict[str, Any], resource_type: str) -> tuple[int | None, int | None]:
    for element in DATE_ELEMENTS.get(resource_type, ()):
        value = resource.get(element)
        if value is None:
            continue
        try:
            if isinstance(value, dict):  # a Period
                start = parse_date(value["start"])[0] if value.get("start") else None
                end = parse_date(value["end"])[1] if value.get("end") else None
                if start is None and end is None:
                    continue
                return start, end
            if isinstance(value, str):
                return parse_date(value)
        except FHIRError as exc:
            raise FHIRError(400, f"{resource_type}.{element}: {exc.diagnostics}") from None
        raise FHIRError(400, f"{resource_type}.{element} must be a date or a Period")
    return None, None


def index_resource(resource: dict[str, Any], fhir_base: str) -> Indexed:
    """The index columns of a client-written resource of a type :mod:`.search` supports."""
    resource_type = resource["resourceType"]
    params = SEARCH_PARAMS.get(resource_type, {})
    tokens: list[tuple[str, str, str]] = []
    if "code" in params and resource_type in CODE_ELEMENTS:
        tokens.extend(
            ("code", s, c) for s, c in _codings(resource.get(CODE_ELEMENTS[resource_type]))
        )
    if "category" in params:
        tokens.extend(("category", s, c) for s, c in _codings(resource.get("category")))
    if "identifier" in params:
        for identifier in resource.get("identifier") or []:
            if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                system = identifier.get("system")
                tokens.append(
                    ("identifier", system if isinstance(system, str) else "", identifier["value"])
                )
    if "gender" in params and isinstance(resource.get("gender"), str):
        tokens.append(("gender", GENDER_SYSTEM, resource["gender"]))
    if "name" in params:
        for name in resource.get("name") or []:
            if not isinstance(name, dict):
                continue
            family = name.get("family")
            parts = [("family", family)] if isinstance(family, str) else []
            parts += [("given", g) for g in name.get("given") or [] if isinstance(g, str)]
            for param, text in parts:
                if param in params:
                    tokens.append((param, "", normalise_text(text)))
                tokens.append(("name", "", normalise_text(text)))
    start, end = _date_range(resource, resource_type)
    if start is not None and end is None:
        end = start + 1
    return Indexed(
        compartment_patient(resource, fhir_base), start, end, tuple(dict.fromkeys(tokens))
    )
