"""A small terminology service: ``CodeSystem/$lookup`` and ``ValueSet/$expand``.

It knows exactly the codes the synthetic data uses (LOINC, SNOMED CT, RxNorm,
observation categories), with the displays the generator writes, taken from
:mod:`.synthetic` so the two cannot disagree. ValueSets: FHIR's vital-signs
set (restricted to the vital signs in the data) and one per kind of code in
the data (conditions, medications, laboratory tests).

Codes are not patient data, but the service is part of the FHIR server: it
needs a valid access token (no resource scope).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from flask import Blueprint, Response, request

from . import synthetic as s
from .guard import Guard, fhir_response
from .outcome import FHIRError

SANDBOX_VALUESETS = "http://sandbox.jupyterhub-smart.org/fhir/ValueSet"
VITAL_SIGNS = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult"
SYSTEM_NAMES = {
    s.LOINC: "LOINC",
    s.SNOMED: "SNOMED CT",
    s.RXNORM: "RxNorm",
    s.OBS_CATEGORY: "Observation Category Codes",
}
MAX_FILTER = 200


def _coding(concept: dict[str, Any]) -> tuple[str, str, str]:
    coding = concept["coding"][0]
    return coding["system"], coding["code"], coding["display"]


_VITALS = [_coding(c) for c in (s._HR, s._BP, s._SYS, s._DIA, s._WEIGHT, s._BMI)]
_LABS = [_coding(s._GLUCOSE)]
_CONDITIONS = [(s.SNOMED, code, display) for code, display, _, _ in s.CONDITIONS]
_MEDICATIONS = [(s.RXNORM, m[0], m[1]) for *_, m in s.CONDITIONS if m is not None]
_OTHER = [
    _coding(s._CHECKUP[0]),
    _coding(s._VITAL[0]),
    _coding(s._LAB[0]),
]
#: ValueSet url -> (title, codes).
VALUESETS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    VITAL_SIGNS: ("Vital signs (those in the sandbox's data)", _VITALS),
    f"{SANDBOX_VALUESETS}/conditions": ("Conditions in the sandbox's data", _CONDITIONS),
    f"{SANDBOX_VALUESETS}/medications": ("Medications in the sandbox's data", _MEDICATIONS),
    f"{SANDBOX_VALUESETS}/laboratory": ("Laboratory tests in the sandbox's data", _LABS),
}
#: (system, code) -> display, for $lookup.
CODES = {(sy, c): d for sy, c, d in [*_VITALS, *_LABS, *_CONDITIONS, *_MEDICATIONS, *_OTHER]}


def _one(name: str) -> str:
    values = request.args.getlist(name)
    if len(values) != 1 or not values[0]:
        raise FHIRError(400, f"give {name} exactly once")
    if len(values[0]) > MAX_FILTER:
        raise FHIRError(400, f"{name} is longer than {MAX_FILTER} characters")
    return values[0]


def register(bp: Blueprint, guard: Guard) -> None:
    """``/CodeSystem/$lookup`` and ``/ValueSet/$expand`` on ``bp``."""

    @bp.get("/CodeSystem/$lookup")
    def lookup() -> Response:
        guard.grant()
        system, code = _one("system"), _one("code")
        if system not in SYSTEM_NAMES:
            raise FHIRError(
                404,
                f"this terminology service does not know the code system {system!r}; it knows "
                + ", ".join(SYSTEM_NAMES),
                code="not-found",
            )
        display = CODES.get((system, code))
        if display is None:
            raise FHIRError(
                404,
                f"code {code!r} is not in {SYSTEM_NAMES[system]} as this server knows it",
                code="not-found",
            )
        parameters = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "name", "valueString": SYSTEM_NAMES[system]},
                {"name": "display", "valueString": display},
                {"name": "code", "valueCode": code},
                {"name": "system", "valueUri": system},
            ],
        }
        return fhir_response(orjson.dumps(parameters))

    @bp.get("/ValueSet/$expand")
    def expand() -> Response:
        guard.grant()
        url = _one("url")
        if url not in VALUESETS:
            raise FHIRError(
                404,
                f"no ValueSet {url!r} here; this server expands " + ", ".join(VALUESETS),
                code="not-found",
            )
        text = request.args.get("filter", "")
        if len(text) > MAX_FILTER:
            raise FHIRError(400, f"filter is longer than {MAX_FILTER} characters")
        title, codes = VALUESETS[url]
        wanted = text.casefold()
        contains = [
            {"system": sy, "code": c, "display": d}
            for sy, c, d in codes
            if not wanted or wanted in d.casefold() or wanted in c.casefold()
        ]
        now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        valueset = {
            "resourceType": "ValueSet",
            "url": url,
            "status": "active",
            "title": title,
            "expansion": {
                "identifier": f"urn:uuid:{uuid.uuid4()}",
                "timestamp": now,
                "total": len(contains),
                **({"parameter": [{"name": "filter", "valueString": text}]} if text else {}),
                "contains": contains,
            },
        }
        return fhir_response(orjson.dumps(valueset))
