"""``_history`` (instance and type level, with ``_since``) and ``vread``.

Every version is filtered by the token's scopes on its own: a version in
another patient's compartment (a resource moved by an update) or outside a
``?category=`` restriction is left out, and an instance the token cannot see
in any version is a 404, as for read. Instance history and vread need read
(``r``) access; type history, which lists many resources, needs search (``s``).

Type history runs newest first: the versions the server wrote (``history``
table, by write order), then the generated resources nobody changed (which
all carry the generation time as ``lastUpdated``). The ``_cursor`` of a next
link says where to continue in that order.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from flask import Blueprint, Response, request

from . import versions
from .access import Access
from .guard import Guard, fhir_response
from .outcome import FHIRError
from .search import DEFAULT_COUNT, MAX_COUNT, parse_date
from .store import FHIRStore

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_VERSION = re.compile(r"^[0-9]{1,9}$")
_CURSOR = re.compile(r"^(?P<kind>[hgv])(?P<n>[0-9]{1,18})$")
_STATUS = {"POST": "201", "PUT": "200", "PATCH": "200", "DELETE": "204"}
_HISTORY_PARAMS = frozenset({"_since", "_count", "_cursor", "_format"})


def _check_id(resource_id: str) -> None:
    if not _ID.match(resource_id):
        raise FHIRError(400, "that is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")


def _params() -> tuple[int | None, int, str | None]:
    """``(_since as Unix seconds, _count, _cursor)`` of a history request, strictly parsed."""
    unknown = sorted(set(request.args) - _HISTORY_PARAMS)
    if unknown:
        raise FHIRError(400, f"unknown history parameter {unknown[0]!r}; supported: _since, _count")
    since_text = request.args.get("_since")
    since = parse_date(since_text)[0] if since_text else None
    count_text = request.args.get("_count", str(DEFAULT_COUNT))
    if not (count_text.isascii() and count_text.isdigit()) or len(count_text) > 9:
        raise FHIRError(400, f"_count must be a whole number, got {count_text[:20]!r}")
    return since, max(1, min(int(count_text), MAX_COUNT)), request.args.get("_cursor")


def entry(
    base: str,
    resource_type: str,
    resource_id: str,
    version: int,
    method: str,
    updated: int,
    body: bytes,
) -> dict[str, Any]:
    """One history Bundle entry (no resource for a deletion)."""
    item: dict[str, Any] = {"fullUrl": f"{base}/{resource_type}/{resource_id}"}
    if method != "DELETE":
        item["resource"] = orjson.Fragment(body)
    item["request"] = {
        "method": "DELETE" if method == "DELETE" else ("POST" if method == "POST" else "PUT"),
        "url": resource_type if method == "POST" else f"{resource_type}/{resource_id}",
    }
    item["response"] = {
        "status": _STATUS.get(method, "200"),
        "etag": versions.etag(version),
        "lastModified": versions.instant(updated),
    }
    return item


def history_bundle(entries: list[dict[str, Any]], self_url: str, next_url: str | None) -> bytes:
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "history",
            "link": links,
            "entry": entries,
        }
    )


def _link(base: str, path: str, since: str | None, count: int, cursor: str | None) -> str:
    from urllib.parse import urlencode

    params = [("_since", since)] if since else []
    params.append(("_count", str(count)))
    if cursor:
        params.append(("_cursor", cursor))
    return f"{base}/{path}?{urlencode(params)}"


def instance_versions(
    store: FHIRStore, access: Access, resource_id: str
) -> list[tuple[int, str, int, bytes]]:
    """Every version the token may see, newest first: ``(version, method, updated, json)``.

    404 when it may see none (or the resource does not exist).
    """
    rows = store.query(
        "SELECT version, method, last_updated, patient, json FROM history "
        "WHERE type = ? AND id = ? ORDER BY version DESC",
        (access.resource_type, resource_id),
    )
    found: list[tuple[int, str, int, bytes]] = []
    if rows:
        for version, method, updated, patient, body in rows:
            if access.permits(orjson.loads(body), patient):
                found.append((version, method, updated, body))
    else:
        stored = store.read_stored(access.resource_type, resource_id)
        if stored is not None and access.permits(orjson.loads(stored.json), stored.patient):
            found.append((1, "POST", versions.GENERATED_AT, stored.json))
    if not found:
        raise FHIRError(
            404, f"{access.resource_type}/{resource_id} is not known or not visible to this token"
        )
    return found


def register(bp: Blueprint, store: FHIRStore, guard: Guard) -> None:
    """Routes ``/<type>/<id>/_history[/<vid>]`` and ``/<type>/_history``."""
    base = guard.fhir_base

    @bp.get("/<resource_type>/<resource_id>/_history/<version_id>")
    def vread(resource_type: str, resource_id: str, version_id: str) -> Response:
        access = guard.access(resource_type, "r")
        _check_id(resource_id)
        if not _VERSION.match(version_id):
            raise FHIRError(
                404, f"{resource_type}/{resource_id} has no version {version_id[:16]!r}"
            )
        for version, method, updated, body in instance_versions(store, access, resource_id):
            if version != int(version_id):
                continue
            if method == "DELETE":
                raise FHIRError(
                    410, f"version {version} of {resource_type}/{resource_id} is its deletion"
                )
            from .writes import http_date

            return fhir_response(
                body,
                ETag=versions.etag(version),
                Last_Modified=http_date(versions.instant(updated)),
            )
        raise FHIRError(404, f"{resource_type}/{resource_id} has no version {version_id[:16]!r}")

    @bp.get("/<resource_type>/<resource_id>/_history")
    def instance_history(resource_type: str, resource_id: str) -> Response:
        access = guard.access(resource_type, "r")
        _check_id(resource_id)
        since, count, cursor = _params()
        below = None
        if cursor is not None:
            match = _CURSOR.match(cursor)
            if not match or match["kind"] != "v":
                raise FHIRError(400, "_cursor is not one this server issued; follow the next link")
            below = int(match["n"])
        rows = [
            r
            for r in instance_versions(store, access, resource_id)
            if (since is None or r[2] >= since) and (below is None or r[0] < below)
        ]
        page, more = rows[:count], len(rows) > count
        path = f"{resource_type}/{resource_id}/_history"
        since_text = request.args.get("_since")
        return fhir_response(
            history_bundle(
                [entry(base, resource_type, resource_id, *r) for r in page],
                _link(base, path, since_text, count, cursor),
                _link(base, path, since_text, count, f"v{page[-1][0]}") if more else None,
            )
        )

    @bp.get("/<resource_type>/_history")
    def type_history(resource_type: str) -> Response:
        access = guard.access(resource_type, "s")
        since, count, cursor = _params()
        kind, position = "h", None
        if cursor is not None:
            match = _CURSOR.match(cursor)
            if not match or match["kind"] == "v":
                raise FHIRError(400, "_cursor is not one this server issued; follow the next link")
            kind, position = match["kind"], int(match["n"])
        entries: list[dict[str, Any]] = []
        next_cursor: str | None = None
        if kind == "h":
            patient_only = access.patient_only and access.grant.patient
            while len(entries) <= count:
                sql = (
                    "SELECT hseq, id, version, method, last_updated, patient, json FROM history "
                    "WHERE type = ? AND last_updated >= ?"
                )
                args: list[object] = [resource_type, since or 0]
                if position is not None:
                    sql += " AND hseq < ?"
                    args.append(position)
                if patient_only:
                    sql += " AND patient = ?"
                    args.append(access.grant.patient)
                sql += " ORDER BY hseq DESC LIMIT ?"
                args.append(count + 1)
                rows = store.query(sql, args)
                for hseq, rid, version, method, updated, patient, body in rows:
                    if len(entries) == count:
                        next_cursor = f"h{position}"
                        break
                    position = hseq
                    if access.permits(orjson.loads(body), patient):
                        entries.append(
                            entry(base, resource_type, rid, version, method, updated, body)
                        )
                if next_cursor or len(rows) <= count:
                    break
            if next_cursor is None and (since is None or since <= versions.GENERATED_AT):
                kind, position = "g", None
        if kind == "g" and next_cursor is None and len(entries) <= count:
            clauses = access.clauses()
            where = " AND ".join(f"({c.sql})" for c in clauses) or "1"
            sql = (
                "SELECT r.seq, r.id, r.json FROM resources r WHERE r.type = ? AND "  # noqa: S608 (fixed fragments)
                "NOT EXISTS (SELECT 1 FROM history h WHERE h.type = r.type AND h.id = r.id) AND "
                f"r.last_updated >= ? AND {where}"
            )
            args = [resource_type, since or 0]
            for c in clauses:
                args.extend(c.args)
            if position is not None:
                sql += " AND r.seq < ?"
                args.append(position)
            sql += " ORDER BY r.seq DESC LIMIT ?"
            args.append(count - len(entries) + 1)
            for seq, rid, body in store.query(sql, args):
                if len(entries) == count:
                    next_cursor = f"g{position if position is not None else 10**17}"
                    break
                position = seq
                entries.append(
                    entry(base, resource_type, rid, 1, "POST", versions.GENERATED_AT, body)
                )
        path = f"{resource_type}/_history"
        since_text = request.args.get("_since")
        return fhir_response(
            history_bundle(
                entries,
                _link(base, path, since_text, count, cursor),
                _link(base, path, since_text, count, next_cursor) if next_cursor else None,
            )
        )
