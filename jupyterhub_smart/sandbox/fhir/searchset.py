"""Search Bundles: matches, included resources, subsets, ``_summary=count``.

Search pages are built by splicing the stored JSON bytes of each resource into
the Bundle (``orjson.Fragment``): no resource is parsed or re-serialised, which
is what keeps a page of 1,000 Observations well under 100 ms. Only what asks
for more pays for it: ``_include``/``_revinclude`` parse the page to follow its
references (:mod:`.includes`), ``_elements``/``_summary`` cut each resource
down (:mod:`.subset`).

Paging is by keyset (``_cursor`` holds the sort key and row number of the last
entry), not by offset: a page link keeps meaning the same rows while resources
are added, and deep pages cost the same as the first.

Chained and ``_has`` parameters look at another type's resources: those are
limited by the token's own scopes on that type (a 403 without any), so that a
search cannot learn through a chain what it could not search directly.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from flask import Response

from . import includes, subset
from .access import scoped
from .guard import Guard, fhir_response
from .outcome import FHIRError
from .search import Clause, parse_search
from .store import FHIRStore


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def search(
    store: FHIRStore, guard: Guard, resource_type: str, params: list[tuple[str, str]]
) -> Response:
    """One page of a search of ``resource_type`` as the token may see it."""
    granted = guard.access(resource_type, "s")
    base = guard.fhir_base
    query = parse_search(resource_type, params, base)
    specs = includes.parse(query.includes)

    def visibility(target: str) -> list[Clause]:
        access = scoped(granted.grant, target, "s", base)
        if access is None:
            raise FHIRError(
                403,
                f"this search looks at {target} resources (a chained or _has parameter), and "
                f"the token's scopes do not allow searching {target}",
            )
        return access.clauses()

    query.resolve(visibility)
    restrict = granted.clauses()
    if query.summary_count:
        (total,) = store.query(*query.count_sql(restrict))[0]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": _now()},
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": query.link(base)}],
        }
        return fhir_response(orjson.dumps(bundle))
    rows = store.query(*query.page_sql(restrict))
    links = [
        {
            "relation": "self",
            "url": query.link(
                base,
                None
                if query.cursor is None
                else query.cursor_after(query.cursor[1], query.cursor[0]),
            ),
        }
    ]
    if len(rows) > query.count:
        rows = rows[: query.count]
        last_seq, last_date = rows[-1][0], rows[-1][1]
        links.append(
            {"relation": "next", "url": query.link(base, query.cursor_after(last_seq, last_date))}
        )
    prefix = f"{base}/{resource_type}/"
    subsetting = query.elements is not None or query.summary is not None
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": prefix + rid,
            "resource": orjson.Fragment(
                subset.subset(body, query.elements, query.summary) if subsetting else body
            ),
            "search": {"mode": "match"},
        }
        for _, _, rid, body in rows
    ]
    if specs and rows:
        matches = [orjson.loads(body) for _, _, _, body in rows]
        found, cut = includes.resolve(store, granted.grant, base, specs, matches)
        for kind, body in found:
            rid = orjson.loads(body)["id"]
            entries.append(
                {
                    "fullUrl": f"{base}/{kind}/{rid}",
                    "resource": orjson.Fragment(body),
                    "search": {"mode": "include"},
                }
            )
        if cut:
            entries.append(
                {
                    "resource": {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {
                                "severity": "warning",
                                "code": "too-costly",
                                "diagnostics": f"included resources stop at {includes.MAX_INCLUDED} "
                                f"per page and {includes.MAX_ROUNDS} rounds of :iterate; ask for "
                                "smaller pages (_count) or fewer includes",
                            }
                        ],
                    },
                    "search": {"mode": "outcome"},
                }
            )
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": _now()},
        "type": "searchset",
        "link": links,
        "entry": entries,
    }
    return fhir_response(orjson.dumps(bundle))
