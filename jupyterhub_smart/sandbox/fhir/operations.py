"""``Patient/<id>/$everything`` and ``Observation/$lastn``, within the token's scopes.

``$everything`` returns the patient's compartment: the Patient and every
resource of the served types whose subject is that patient, each type only if
the token may read it, and each resource through the same visibility clauses
as a read (so a ``?category=laboratory`` scope yields no vital signs here
either). Resources outside the compartment that the record references
(Practitioners) are not part of it here: ``_include`` them where needed.
Paging is by keyset, like search. ``_since`` keeps resources changed since then,
``_type`` a comma-separated list of types.

``$lastn`` returns, for each code (and patient) among the matches of an
Observation search, the ``max`` most recent Observations (by effective date).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Response, request

from .access import scoped
from .guard import Guard, fhir_response
from .outcome import FHIRError
from .search import MAX_COUNT, Clause, parse_date, parse_search
from .store import FHIRStore

#: Types of the patient compartment this server serves, in the order $everything lists them.
COMPARTMENT = (
    "Patient",
    "Condition",
    "MedicationRequest",
    "Encounter",
    "Observation",
    "RiskAssessment",
)
EVERYTHING_PARAMS = frozenset({"_since", "_type", "_count", "_cursor", "_format"})
DEFAULT_EVERYTHING_COUNT = 1000
MAX_LASTN = 100
MAX_LASTN_RESULTS = 10_000
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CURSOR = re.compile(r"^s(?P<seq>[0-9]{1,18})$")


def _bundle(
    entries: list[dict[str, Any]], links: list[dict[str, str]], total: int | None = None
) -> bytes:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = entries
    return orjson.dumps(bundle)


def _types(text: str | None) -> list[str]:
    if not text:
        return list(COMPARTMENT)
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in COMPARTMENT]
    if unknown or not wanted:
        raise FHIRError(
            400,
            f"_type {unknown[:3] or text[:40]!r}: $everything here covers {', '.join(COMPARTMENT)}",
        )
    return [t for t in COMPARTMENT if t in wanted]


def register(bp: Blueprint, store: FHIRStore, guard: Guard) -> None:
    """The operation routes of ``bp``."""
    base = guard.fhir_base

    @bp.get("/Patient/<patient_id>/$everything")
    def everything(patient_id: str) -> Response:
        granted = guard.access("Patient", "r")
        if not _ID.match(patient_id):
            raise FHIRError(400, "that is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
        unknown = sorted(set(request.args) - EVERYTHING_PARAMS)
        if unknown:
            raise FHIRError(
                400,
                f"unknown $everything parameter {unknown[0]!r}; supported: _since, _type, _count",
            )
        stored = store.read_stored("Patient", patient_id)
        if stored is None or not granted.permits(orjson.loads(stored.json), stored.patient):
            raise FHIRError(404, f"Patient/{patient_id} is not known or not visible to this token")
        count_text = request.args.get("_count", str(DEFAULT_EVERYTHING_COUNT))
        if not (count_text.isascii() and count_text.isdigit()) or len(count_text) > 9:
            raise FHIRError(400, f"_count must be a whole number, got {count_text[:20]!r}")
        count = max(1, min(int(count_text), MAX_COUNT))
        since_text = request.args.get("_since")
        types = _types(request.args.get("_type"))
        alternatives: list[Clause] = []
        for resource_type in types:
            access = scoped(granted.grant, resource_type, "r", base)
            if access is None:
                continue
            parts = [Clause("r.type = ?", (resource_type,)), *access.clauses()]
            args: list[object] = []
            for c in parts:
                args.extend(c.args)
            alternatives.append(Clause(" AND ".join(f"({c.sql})" for c in parts), tuple(args)))
        where = [Clause("r.patient = ?", (patient_id,))]
        if alternatives:
            args = []
            for c in alternatives:
                args.extend(c.args)
            where.append(Clause(" OR ".join(f"({c.sql})" for c in alternatives), tuple(args)))
        else:
            where.append(Clause("0"))
        if since_text:
            where.append(Clause("r.last_updated >= ?", (parse_date(since_text)[0],)))
        cursor = request.args.get("_cursor")
        if cursor is not None:
            match = _CURSOR.match(cursor)
            if not match:
                raise FHIRError(400, "_cursor is not one this server issued; follow the next link")
            where.append(Clause("r.seq > ?", (int(match["seq"]),)))
        args = []
        for c in where:
            args.extend(c.args)
        args.append(count + 1)
        sql = (
            "SELECT r.seq, r.type, r.id, r.json FROM resources r WHERE "  # noqa: S608 (fixed fragments)
            + " AND ".join(f"({c.sql})" for c in where)
            + " ORDER BY r.seq LIMIT ?"
        )
        rows = store.query(sql, args)
        params = [(k, v) for k, v in request.args.items(multi=True) if k != "_cursor"]
        path = f"{base}/Patient/{patient_id}/$everything"
        links = [
            {
                "relation": "self",
                "url": path
                + (f"?{urlencode(list(request.args.items(multi=True)))}" if request.args else ""),
            }
        ]
        if len(rows) > count:
            rows = rows[:count]
            links.append(
                {
                    "relation": "next",
                    "url": f"{path}?{urlencode([*params, ('_cursor', f's{rows[-1][0]}')])}",
                }
            )
        entries = [
            {
                "fullUrl": f"{base}/{kind}/{rid}",
                "resource": orjson.Fragment(body),
                "search": {"mode": "match"},
            }
            for _, kind, rid, body in rows
        ]
        return fhir_response(_bundle(entries, links))

    @bp.get("/Patient/$everything")
    def everything_without_patient() -> Response:
        guard.access("Patient", "r")
        raise FHIRError(
            400, "name the patient: Patient/<id>/$everything (one patient at a time here)"
        )

    @bp.get("/Observation/$lastn")
    def lastn() -> Response:
        granted = guard.access("Observation", "s")
        params = list(request.args.items(multi=True))
        max_values = [v for k, v in params if k == "max"]
        if len(max_values) > 1:
            raise FHIRError(400, "max may be given only once")
        text = max_values[0] if max_values else "1"
        if (
            not (text.isascii() and text.isdigit())
            or not 1 <= int(text[:4] or 0) <= MAX_LASTN
            or len(text) > 3
        ):
            raise FHIRError(
                400, f"max must be a whole number from 1 to {MAX_LASTN}, got {text[:20]!r}"
            )
        query = parse_search("Observation", [(k, v) for k, v in params if k != "max"], base)
        if (
            query.includes
            or query.elements
            or query.summary
            or query.summary_count
            or query.subqueries
        ):
            raise FHIRError(
                400,
                "$lastn takes search parameters and max only (no _include, _elements, _summary, chains)",
            )
        where = [Clause("r.type = 'Observation'"), *query.filters, *granted.clauses()]
        args: list[object] = []
        for c in where:
            args.extend(c.args)
        args.extend([int(text), MAX_LASTN_RESULTS + 1])
        sql = (
            "SELECT seq, id, json FROM (SELECT r.seq, r.id, r.json, r.date_start, ROW_NUMBER() OVER ("  # noqa: S608 (fixed fragments)
            "PARTITION BY r.patient, t.system, t.value ORDER BY r.date_start DESC, r.seq DESC) AS n "
            "FROM resources r JOIN tokens t ON t.seq = r.seq AND t.param = 'code' WHERE "
            + " AND ".join(f"({c.sql})" for c in where)
            + ") WHERE n <= ? ORDER BY date_start, seq LIMIT ?"
        )
        rows = store.query(sql, args)
        if len(rows) > MAX_LASTN_RESULTS:
            raise FHIRError(
                400,
                f"$lastn would return more than {MAX_LASTN_RESULTS} Observations: name a patient, "
                "a code or a category",
                code="too-costly",
            )
        entries = [
            {
                "fullUrl": f"{base}/Observation/{rid}",
                "resource": orjson.Fragment(body),
                "search": {"mode": "match"},
            }
            for _, rid, body in rows
        ]
        self_url = f"{base}/Observation/$lastn?{urlencode(params)}"
        return fhir_response(
            _bundle(entries, [{"relation": "self", "url": self_url}], total=len(entries))
        )
