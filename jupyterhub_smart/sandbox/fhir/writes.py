"""Create, update, patch and delete, versioned, within the token's scopes.

Each write is checked twice against the token, as search is: the scope must
allow the interaction on the type (``c``, ``u``, ``d``; v1 ``.write``), and
the resource must lie where the scope reaches. A ``patient/`` scope writes
only in the launched patient's compartment, and the resource may name no
other patient anywhere; a v2 ``?category=`` scope writes only resources of
that category. An update or delete of a resource the token cannot see is a
404, word for word the answer for an id that does not exist.

Optimistic locking: ``If-Match: W/"n"`` makes an update, patch or delete
happen only at version n (412 otherwise). ``If-None-Exist`` makes a create
conditional on a search (run with the token's own search scope, so it never
reveals what the token could not search). ``Prefer: return=minimal`` answers
without a body; ``return=OperationOutcome`` with an outcome.

The core functions take a connection inside a write transaction, so that
:mod:`.bundles` applies a transaction's entries with the very same checks.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, Response, request

from . import versions
from .access import Access
from .guard import Guard, fhir_response, known_type
from .indexing import Indexed, index_resource
from .outcome import FHIRError, outcome_body
from .search import parse_search
from .store import FHIRStore

log = logging.getLogger(__name__)

#: Largest resource (or patch) a write accepts.
MAX_WRITE_BYTES = 256 * 1024
JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
PATCH_TYPE = "application/json-patch+json"
#: Elements a resource of each type must have (a subset of FHIR R4's cardinalities).
REQUIRED: dict[str, tuple[str, ...]] = {
    "Observation": ("status", "code"),
    "Condition": ("subject",),
    "Encounter": ("status", "class"),
    "MedicationRequest": ("status", "intent", "subject"),
    "RiskAssessment": ("status", "subject"),
}
#: Types whose records are immutable here (created through their own route only).
IMMUTABLE = frozenset({"AuditEvent"})


def read_json_body(allowed: frozenset[str] = JSON_TYPES, limit: int = MAX_WRITE_BYTES) -> Any:
    """The request's JSON body, or 415/413/400 saying what is wrong with it."""
    if request.mimetype not in allowed:
        raise FHIRError(415, f"send the body as {' or '.join(sorted(allowed))}")
    if request.content_length is not None and request.content_length > limit:
        raise FHIRError(413, f"the body may be at most {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise FHIRError(413, f"the body may be at most {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FHIRError(400, "the body is not valid JSON") from None


def check_resource(
    resource_type: str, resource: Any, resource_id: str | None = None
) -> dict[str, Any]:
    """``resource`` as a resource of ``resource_type`` fit to store (400/422 otherwise)."""
    if not isinstance(resource, dict):
        raise FHIRError(400, "the body must be a JSON object (a FHIR resource)")
    if resource.get("resourceType") != resource_type:
        raise FHIRError(
            400,
            f"resourceType must be {resource_type!r} here, got {resource.get('resourceType')!r}",
        )
    if resource_id is not None and resource.get("id") != resource_id:
        raise FHIRError(400, f"the resource's id must be {resource_id!r}, the id in the URL")
    missing = [e for e in REQUIRED.get(resource_type, ()) if resource.get(e) in (None, "", [], {})]
    if missing:
        raise FHIRError(422, f"{resource_type} needs {', '.join(missing)}", code="required")
    if "contained" in resource and not isinstance(resource["contained"], list):
        raise FHIRError(422, "contained must be a list of resources")
    return resource


def permitted_index(access: Access, resource: dict[str, Any]) -> Indexed:
    """The resource's index columns, or a 403 when the token may not write it there."""
    indexed = index_resource(resource, access.fhir_base)
    if not access.permits(resource, indexed.patient):
        where = (
            f"the launched patient's compartment (subject = Patient/{access.grant.patient}) and "
            "naming no other patient"
            if access.patient_only
            else "what the token's scopes allow (e.g. their ?category= restriction)"
        )
        raise FHIRError(
            403,
            f"the token's {', '.join(s.raw for s in access.scopes)} allow writing "
            f"{access.resource_type} only within {where}",
        )
    return indexed


def visible_current(conn: sqlite3.Connection, access: Access, resource_id: str) -> versions.Current:
    """The live version the token may change, or the 404 of an unknown id."""
    found = versions.current(conn, access.resource_type, resource_id)
    if found is None or not access.permits(orjson.loads(found.json), found.patient):
        raise FHIRError(
            404, f"{access.resource_type}/{resource_id} is not known or not visible to this token"
        )
    return found


def check_if_match(if_match: str | None, found: versions.Current) -> None:
    """412 unless ``If-Match`` (when given) names the current version."""
    if if_match is None:
        return
    wanted = if_match.strip().removeprefix("W/").strip('"')
    if wanted != str(found.version):
        raise FHIRError(
            412,
            f"If-Match {if_match[:40]!r} does not match the current version "
            f"{versions.etag(found.version)}: read the resource again, re-apply your change",
            code="conflict",
        )


def create(
    conn: sqlite3.Connection, access: Access, resource: dict[str, Any], new_id: str | None = None
) -> tuple[dict[str, Any], bytes]:
    """A new resource under a server-assigned id."""
    indexed = permitted_index(access, resource)
    return versions.write(conn, resource, indexed, "POST", new_id=new_id)


def conditional_match(
    conn: sqlite3.Connection, search_access: Access | None, resource_type: str, condition: str
) -> versions.Current | None:
    """The one existing match of an ``If-None-Exist`` search, None for none; 412 for several."""
    if search_access is None:
        raise FHIRError(
            403,
            f"a conditional create (If-None-Exist) searches {resource_type}, which this "
            f"token's scopes do not allow: add {resource_type} search (.s) to the scopes",
        )
    query = parse_search(resource_type, parse_qsl(condition), search_access.fhir_base)
    query.count = 2
    sql, args = query.page_sql(search_access.clauses())
    rows = conn.execute(sql, args).fetchall()
    if len(rows) > 1:
        raise FHIRError(412, f"If-None-Exist {condition[:100]!r} matches more than one resource")
    if not rows:
        return None
    return versions.current(conn, resource_type, rows[0][2])


def update(
    conn: sqlite3.Connection,
    access: Access,
    resource_id: str,
    resource: dict[str, Any],
    if_match: str | None,
    method: str = "PUT",
) -> tuple[dict[str, Any], bytes]:
    """The next version of a live resource the token may see and write."""
    found = visible_current(conn, access, resource_id)
    check_if_match(if_match, found)
    indexed = permitted_index(access, resource)
    return versions.write(conn, resource, indexed, method, existing=found)


def apply_patch(current: dict[str, Any], operations: Any) -> dict[str, Any]:
    """``current`` with a JSON Patch (RFC 6902) applied; 400 for a malformed patch, 422 if it fails."""
    if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
        raise FHIRError(400, "a JSON Patch is a JSON array of operation objects")
    # Imported here: a sandbox installed before PATCH existed still serves everything else.
    import jsonpatch
    import jsonpointer

    try:
        patched = jsonpatch.JsonPatch(operations).apply(current)
    except jsonpatch.InvalidJsonPatch as exc:
        raise FHIRError(400, f"malformed JSON Patch: {str(exc)[:200]}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise FHIRError(422, f"the JSON Patch cannot be applied: {str(exc)[:200]}") from None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise FHIRError(400, f"malformed JSON Patch: {type(exc).__name__}") from None
    if not isinstance(patched, dict) or patched.get("resourceType") != current.get("resourceType"):
        raise FHIRError(422, "a patch may not change the resourceType")
    if patched.get("id") != current.get("id"):
        raise FHIRError(422, "a patch may not change the id")
    return patched


def patch(
    conn: sqlite3.Connection,
    access: Access,
    resource_id: str,
    operations: Any,
    if_match: str | None,
) -> tuple[dict[str, Any], bytes]:
    found = visible_current(conn, access, resource_id)
    check_if_match(if_match, found)
    patched = check_resource(
        access.resource_type, apply_patch(orjson.loads(found.json), operations), resource_id
    )
    indexed = permitted_index(access, patched)
    return versions.write(conn, patched, indexed, "PATCH", existing=found)


def delete(conn: sqlite3.Connection, access: Access, resource_id: str, if_match: str | None) -> int:
    found = visible_current(conn, access, resource_id)
    check_if_match(if_match, found)
    return versions.delete(conn, access.resource_type, found)


def http_date(instant: str) -> str:
    """RFC 7231 date of a FHIR instant (for ``Last-Modified``)."""
    when = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(timezone.utc)
    return format_datetime(when, usegmt=True)


def write_response(
    stored: dict[str, Any], body: bytes, status: int, base: str, prefer: str | None
) -> Response:
    """201/200 with ``Location``, ``ETag``, ``Last-Modified``, and the body ``Prefer`` asks for."""
    meta = stored["meta"]
    location = f"{base}/{stored['resourceType']}/{stored['id']}/_history/{meta['versionId']}"
    returned = (prefer or "").replace(" ", "").lower()
    if "return=minimal" in returned:
        body = b""
    elif "return=operationoutcome" in returned:
        body = outcome_body(
            f"{stored['resourceType']}/{stored['id']} stored", "informational", "information"
        )
    return fhir_response(
        body,
        status,
        Location=location,
        ETag=versions.etag(int(meta["versionId"])),
        Last_Modified=http_date(meta["lastUpdated"]),
    )


def register(bp: Blueprint, store: FHIRStore, guard: Guard) -> Callable[[str], Response]:
    """The update, patch and delete routes of ``bp`` (``/fhir``); returns the create view.

    :mod:`.api` owns ``POST /<type>`` (AuditEvents have their own checks) and
    hands every other type to the returned function.
    """
    base = guard.fhir_base

    def writable(resource_type: str) -> None:
        known_type(resource_type)
        if resource_type in IMMUTABLE:
            raise FHIRError(
                405,
                f"{resource_type}s are records: they are created (POST) and never changed",
                headers={"Allow": "GET, POST"},
            )

    def create_route(resource_type: str) -> Response:
        writable(resource_type)
        grant = guard.grant()
        access = guard.require(grant, resource_type, "c")
        resource = check_resource(resource_type, read_json_body())
        resource = {k: v for k, v in resource.items() if k != "id"}
        condition = request.headers.get("If-None-Exist")
        with store.write_transaction() as conn:
            if condition:
                from .access import scoped

                existing = conditional_match(
                    conn, scoped(grant, resource_type, "s", base), resource_type, condition
                )
                if existing is not None:
                    stored = orjson.loads(existing.json)
                    return write_response(
                        stored, existing.json, 200, base, request.headers.get("Prefer")
                    )
            stored, body = create(conn, access, resource)
        log.info("FHIR: client %s created %s/%s", grant.client_id, resource_type, stored["id"])
        return write_response(stored, body, 201, base, request.headers.get("Prefer"))

    @bp.put("/<resource_type>/<resource_id>")
    def update_route(resource_type: str, resource_id: str) -> Response:
        writable(resource_type)
        access = guard.access(resource_type, "u")
        resource = check_resource(resource_type, read_json_body(), resource_id)
        with store.write_transaction() as conn:
            stored, body = update(
                conn, access, resource_id, resource, request.headers.get("If-Match")
            )
        log.info(
            "FHIR: client %s updated %s/%s", access.grant.client_id, resource_type, resource_id
        )
        return write_response(stored, body, 200, base, request.headers.get("Prefer"))

    @bp.patch("/<resource_type>/<resource_id>")
    def patch_route(resource_type: str, resource_id: str) -> Response:
        writable(resource_type)
        access = guard.access(resource_type, "u")
        operations = read_json_body(frozenset({PATCH_TYPE}))
        with store.write_transaction() as conn:
            stored, body = patch(
                conn, access, resource_id, operations, request.headers.get("If-Match")
            )
        log.info(
            "FHIR: client %s patched %s/%s", access.grant.client_id, resource_type, resource_id
        )
        return write_response(stored, body, 200, base, request.headers.get("Prefer"))

    @bp.delete("/<resource_type>/<resource_id>")
    def delete_route(resource_type: str, resource_id: str) -> Response:
        writable(resource_type)
        access = guard.access(resource_type, "d")
        with store.write_transaction() as conn:
            version = delete(conn, access, resource_id, request.headers.get("If-Match"))
        log.info(
            "FHIR: client %s deleted %s/%s", access.grant.client_id, resource_type, resource_id
        )
        return fhir_response(b"", 204, ETag=versions.etag(version))

    return create_route
