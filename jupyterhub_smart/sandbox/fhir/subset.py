"""``_elements`` and ``_summary``: fewer elements per resource, marked ``SUBSETTED``.

A subsetted resource carries the ``SUBSETTED`` tag (FHIR R4 §3.1.1.5.9) so that
nobody stores it back as if it were whole. ``resourceType``, ``id`` and
``meta`` stay in every subset, and so do the elements FHIR requires of the type
(``_elements`` "should" keep them). ``_summary=true`` keeps the type's summary
elements as listed below (the R4 ``isSummary`` elements of the types this
sandbox serves, for the elements its data uses); ``text`` keeps the narrative
and mandatory elements; ``data`` drops only the narrative.
"""

from __future__ import annotations

from typing import Any

import orjson

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
ALWAYS = ("resourceType", "id", "meta")
#: Elements FHIR R4 requires (min 1) of each served type.
MANDATORY: dict[str, tuple[str, ...]] = {
    "Observation": ("status", "code"),
    "Encounter": ("status", "class"),
    "MedicationRequest": ("status", "intent", "subject", "medicationCodeableConcept"),
    "Condition": ("subject",),
    "RiskAssessment": ("status", "subject"),
    "AuditEvent": ("type", "recorded", "agent", "source"),
}
#: ``isSummary`` elements (R4) of each served type.
SUMMARY: dict[str, tuple[str, ...]] = {
    "Patient": (
        "identifier", "active", "name", "telecom", "gender", "birthDate", "deceasedBoolean",
        "deceasedDateTime", "address", "managingOrganization", "link",
    ),
    "Observation": (
        "identifier", "basedOn", "partOf", "status", "category", "code", "subject", "focus",
        "encounter", "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued",
        "performer", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
        "valueInteger", "dataAbsentReason", "hasMember", "derivedFrom", "component",
    ),
    "Condition": (
        "identifier", "clinicalStatus", "verificationStatus", "category", "severity", "code",
        "bodySite", "subject", "encounter", "onsetDateTime", "onsetPeriod", "abatementDateTime",
        "recordedDate",
    ),
    "Encounter": (
        "identifier", "status", "class", "type", "serviceType", "priority", "subject",
        "episodeOfCare", "basedOn", "participant", "appointment", "period", "reasonCode",
        "reasonReference", "diagnosis", "account", "partOf",
    ),
    "MedicationRequest": (
        "identifier", "status", "statusReason", "intent", "category", "priority", "doNotPerform",
        "medicationCodeableConcept", "medicationReference", "subject", "encounter",
        "authoredOn", "requester", "reasonCode", "reasonReference",
    ),
    "Practitioner": ("identifier", "active", "name", "telecom", "address", "gender", "birthDate"),
    "RiskAssessment": (
        "identifier", "basedOn", "parent", "status", "method", "code", "subject", "encounter",
        "occurrenceDateTime", "occurrencePeriod", "condition", "performer", "prediction",
    ),
}  # fmt: skip


def _keep(resource_type: str, elements: list[str] | None, summary: str | None) -> set[str] | None:
    """Top-level elements to keep; None to drop only the narrative (``_summary=data``)."""
    if elements is not None:
        return {*ALWAYS, *MANDATORY.get(resource_type, ()), *elements}
    if summary == "true":
        return {*ALWAYS, *MANDATORY.get(resource_type, ()), *SUMMARY.get(resource_type, ())}
    if summary == "text":
        return {*ALWAYS, *MANDATORY.get(resource_type, ()), "text"}
    return None


def subset(body: bytes, elements: list[str] | None, summary: str | None) -> bytes:
    """The stored JSON ``body`` cut down as asked, tagged ``SUBSETTED``."""
    resource: dict[str, Any] = orjson.loads(body)
    keep = _keep(str(resource.get("resourceType")), elements, summary)
    if keep is None:
        kept = {k: v for k, v in resource.items() if k != "text"}
    else:
        kept = {k: v for k, v in resource.items() if k in keep}
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    kept["meta"] = meta
    return orjson.dumps(kept)
