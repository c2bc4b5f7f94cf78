"""``_include`` and ``_revinclude`` (with ``:iterate``), limited by the token's scopes.

Included resources are where FHIR servers have leaked: the search itself is
filtered to the patient's compartment, but the server then follows a
reference out of it. Here every included resource passes the same visibility
clauses as a search of its own type (read ``r`` for includes, search ``s``
for revincludes): an ``_include`` that points at another patient's Encounter,
or at a Practitioner a ``patient/`` token may not read, is simply not returned.

Iteration is bounded: at most :data:`MAX_ROUNDS` rounds of ``:iterate`` and
:data:`MAX_INCLUDED` included resources per page (a circular set such as
``Observation:encounter`` + ``_revinclude:iterate=Observation:encounter`` ends
when a round finds nothing new, or at those bounds, with an outcome entry
saying so).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..access_grant import AccessGrant
from .access import scoped
from .indexing import reference_id
from .outcome import FHIRError
from .search import SEARCH_PARAMS, Clause
from .store import FHIRStore

MAX_ROUNDS = 4
MAX_INCLUDED = 2000
_CHUNK = 500

#: ``(source type, parameter)`` -> (element path of the reference, target type).
INCLUDES: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    **{
        (t, p): (("subject",), "Patient")
        for t in ("Observation", "Condition", "Encounter", "MedicationRequest", "RiskAssessment")
        for p in ("patient", "subject")
    },
    ("Observation", "encounter"): (("encounter",), "Encounter"),
    ("Encounter", "practitioner"): (("participant", "individual"), "Practitioner"),
    ("MedicationRequest", "requester"): (("requester",), "Practitioner"),
    ("Patient", "general-practitioner"): (("generalPractitioner",), "Practitioner"),
}
#: ``(source type, parameter)`` pairs a ``_revinclude`` can follow back.
REVINCLUDES = frozenset(k for k, (_, target) in INCLUDES.items() if target == "Patient") | {
    ("Observation", "encounter")
}


@dataclass(frozen=True)
class IncludeSpec:
    """One parsed ``_include`` / ``_revinclude``."""

    reverse: bool
    iterate: bool
    source: str
    param: str
    target: str


def parse(specs: Iterable[tuple[str, bool, str]]) -> list[IncludeSpec]:
    """Check each ``(parameter, iterate, Type:param[:Target])``; 400 names what is supported."""
    parsed = []
    for name, iterate, value in specs:
        parts = value.split(":")
        reverse = name == "_revinclude"
        known = REVINCLUDES if reverse else INCLUDES.keys()
        supported = ", ".join(sorted(f"{s}:{p}" for s, p in known))
        if len(parts) not in (2, 3) or (parts[0], parts[1]) not in known:
            raise FHIRError(
                400, f"{name}={value[:80]!r} is not supported here; supported: {supported}"
            )
        _, target = INCLUDES[(parts[0], parts[1])]
        if len(parts) == 3 and parts[2] != target:
            raise FHIRError(400, f"{name}={value[:80]!r}: {parts[0]}.{parts[1]} refers to {target}")
        parsed.append(IncludeSpec(reverse, iterate, parts[0], parts[1], target))
    return parsed


def _references(
    resource: dict[str, Any], path: tuple[str, ...], target: str, base: str
) -> set[str]:
    items: list[Any] = [resource]
    for step in path:
        nxt: list[Any] = []
        for item in items:
            value = item.get(step) if isinstance(item, dict) else None
            nxt.extend(value if isinstance(value, list) else [value] if value is not None else [])
        items = nxt
    return {i for i in (reference_id(item, target, base) for item in items) if i is not None}


def _visible_rows(
    store: FHIRStore,
    grant: AccessGrant,
    base: str,
    resource_type: str,
    interaction: str,
    condition: str,
    values: list[str],
) -> list[tuple[str, bytes]]:
    """``(id, json)`` of ``resource_type`` rows matching ``condition`` that the token may see."""
    access = scoped(grant, resource_type, interaction, base)
    if access is None or not values:
        return []
    clauses: list[Clause] = access.clauses()
    rows: list[tuple[str, bytes]] = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        where = [
            Clause("r.type = ?", (resource_type,)),
            Clause(condition.format(marks=",".join("?" * len(chunk))), tuple(chunk)),
            *clauses,
        ]
        args: list[object] = []
        for c in where:
            args.extend(c.args)
        where_sql = " AND ".join(f"({c.sql})" for c in where)
        sql = f"SELECT r.id, r.json FROM resources r WHERE {where_sql} ORDER BY r.seq LIMIT ?"  # noqa: S608 (fixed fragments)
        args.append(MAX_INCLUDED + 1)
        rows.extend(store.query(sql, args))
    return rows


def resolve(
    store: FHIRStore,
    grant: AccessGrant,
    base: str,
    specs: list[IncludeSpec],
    matches: list[dict[str, Any]],
) -> tuple[list[tuple[str, bytes]], bool]:
    """The included resources of a page, as ``(type, json)``, and whether a bound cut them short."""
    seen = {(r.get("resourceType"), r.get("id")) for r in matches}
    frontier = matches
    found: list[tuple[str, bytes]] = []
    for round_number in range(MAX_ROUNDS):
        active = [s for s in specs if round_number == 0 or s.iterate]
        new: list[dict[str, Any]] = []
        for spec in active:
            sources = [
                r
                for r in frontier
                if r.get("resourceType") == (spec.target if spec.reverse else spec.source)
            ]
            if not sources:
                continue
            if not spec.reverse:
                path, target = INCLUDES[(spec.source, spec.param)]
                ids = sorted(set().union(*(_references(r, path, target, base) for r in sources)))
                rows = _visible_rows(store, grant, base, target, "r", "r.id IN ({marks})", ids)
                kind = target
            elif spec.target == "Patient":
                ids = sorted({r["id"] for r in sources if isinstance(r.get("id"), str)})
                rows = _visible_rows(
                    store, grant, base, spec.source, "s", "r.patient IN ({marks})", ids
                )
                kind = spec.source
            else:  # Observation:encounter, followed back from Encounters
                refs = sorted(
                    {f"Encounter/{r['id']}" for r in sources if isinstance(r.get("id"), str)}
                )
                patients = sorted(
                    {p for r in sources for p in _references(r, ("subject",), "Patient", base)}
                )
                rows = [
                    row
                    for row in _visible_rows(
                        store, grant, base, spec.source, "s", "r.patient IN ({marks})", patients
                    )
                    if (orjson.loads(row[1]).get("encounter") or {}).get("reference") in refs
                ]
                kind = spec.source
            for rid, body in rows:
                if (kind, rid) in seen:
                    continue
                seen.add((kind, rid))
                if len(found) >= MAX_INCLUDED:
                    return found, True
                found.append((kind, body))
                new.append(orjson.loads(body))
        if not new:
            return found, False
        frontier = new
    more = any(s.iterate for s in specs) and bool(frontier)
    return found, more


def declared() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``searchInclude`` and ``searchRevInclude`` per type, for the CapabilityStatement."""
    forward: dict[str, list[str]] = {t: [] for t in SEARCH_PARAMS}
    backward: dict[str, list[str]] = {t: [] for t in SEARCH_PARAMS}
    for (source, param), (_, target) in sorted(INCLUDES.items()):
        forward[source].append(f"{source}:{param}")
        if (source, param) in REVINCLUDES:
            backward[target].append(f"{source}:{param}")
    return forward, backward
