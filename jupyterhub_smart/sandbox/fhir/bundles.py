"""Transaction and batch Bundles (``POST /fhir``), each entry within the token's scopes.

A **transaction** is all or nothing: every entry is checked first (type,
interaction, scope, compartment, body), then all are applied in one SQLite
transaction; the first entry that fails (out of scope, not visible, a stale
``ifMatch``) fails the whole Bundle with an OperationOutcome naming that
entry (``entry[3] (PUT Observation/x)``), and nothing is written. ``urn:uuid:``
full URLs of created entries become real ids, and references to them are
rewritten, as FHIR R4 §3.1.0.11.2 describes.

A **batch** applies each entry on its own and answers each with its status
(and an OperationOutcome when it failed).

Entries run in the order FHIR prescribes (DELETE, POST, PUT/PATCH, GET); the
response keeps the request's order. A Bundle of more than :data:`MAX_ENTRIES`
entries is refused whole with 413 before any entry is looked at.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Blueprint, Response

from ..access_grant import AccessGrant
from . import versions, writes
from .access import scoped
from .guard import Guard, fhir_response
from .outcome import FHIRError
from .store import FHIRStore

log = logging.getLogger(__name__)

MAX_ENTRIES = 1000
MAX_BUNDLE_BYTES = 1024 * 1024
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
_LETTER = {"DELETE": "d", "POST": "c", "PUT": "u", "PATCH": "u", "GET": "r"}


@dataclass
class Entry:
    """One checked entry: what to do, to which resource, with what."""

    index: int
    method: str
    resource_type: str
    resource_id: str | None
    body: Any
    full_url: str | None
    if_match: str | None
    if_none_exist: str | None

    @property
    def label(self) -> str:
        url = self.resource_type + (f"/{self.resource_id}" if self.resource_id else "")
        return f"entry[{self.index}] ({self.method} {url})"


def _plan(index: int, item: Any) -> Entry:
    if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
        raise FHIRError(400, f"entry[{index}] has no request (method and url)")
    req = item["request"]
    method = str(req.get("method", "")).upper()
    url = req.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise FHIRError(
            400, f"entry[{index}]: request.method must be one of {', '.join(_ORDER)} with a url"
        )
    path = url.split("?", 1)[0].strip("/")
    parts = path.split("/")
    if len(parts) > 2 or (method == "POST") != (len(parts) == 1):
        raise FHIRError(
            400,
            f"entry[{index}] ({method} {url[:80]}): the url must be Type for POST, Type/id otherwise",
        )
    resource_type, resource_id = parts[0], (parts[1] if len(parts) == 2 else None)
    body = item.get("resource")
    if method in ("POST", "PUT"):
        body = writes.check_resource(resource_type, body, resource_id)
    if method == "PATCH":
        # FHIR carries a JSON Patch in a Binary; a Parameters (FHIRPath Patch) is not supported
        binary = body if isinstance(body, dict) else {}
        if binary.get("resourceType") != "Binary" or binary.get("contentType") != writes.PATCH_TYPE:
            raise FHIRError(
                400, f"entry[{index}]: a PATCH entry carries a Binary of {writes.PATCH_TYPE}"
            )
        import base64
        import binascii

        try:
            body = orjson.loads(base64.b64decode(str(binary.get("data", "")), validate=True))
        except (binascii.Error, orjson.JSONDecodeError):
            raise FHIRError(400, f"entry[{index}]: the Binary's data is not base64 JSON") from None
    full_url = item.get("fullUrl") if isinstance(item.get("fullUrl"), str) else None
    return Entry(
        index,
        method,
        resource_type,
        resource_id,
        body,
        full_url,
        req.get("ifMatch"),
        req.get("ifNoneExist"),
    )


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with every ``reference`` to a ``urn:uuid:`` of this Bundle made real."""
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in ids:
            out["reference"] = ids[ref]
        return out
    return value


def _apply(
    conn: sqlite3.Connection, grant: AccessGrant, guard: Guard, entry: Entry, new_id: str | None
) -> dict[str, Any]:
    """Apply one entry; its ``response`` element (and resource for a GET)."""
    access = guard.require(grant, entry.resource_type, _LETTER[entry.method])
    if entry.method == "GET":
        found = writes.visible_current(conn, access, str(entry.resource_id))
        return {
            "resource": orjson.Fragment(found.json),
            "response": {"status": "200", "etag": versions.etag(found.version)},
        }
    if entry.method == "DELETE":
        version = writes.delete(conn, access, str(entry.resource_id), entry.if_match)
        return {"response": {"status": "204", "etag": versions.etag(version)}}
    if entry.method == "POST":
        if entry.if_none_exist:
            existing = writes.conditional_match(
                conn,
                scoped(grant, entry.resource_type, "s", guard.fhir_base),
                entry.resource_type,
                entry.if_none_exist,
            )
            if existing is not None:
                rid = orjson.loads(existing.json)["id"]
                return {
                    "response": {
                        "status": "200",
                        "location": f"{entry.resource_type}/{rid}/_history/{existing.version}",
                        "etag": versions.etag(existing.version),
                    }
                }
        stored, _ = writes.create(
            conn, access, {k: v for k, v in entry.body.items() if k != "id"}, new_id
        )
        status = "201"
    elif entry.method == "PUT":
        stored, _ = writes.update(conn, access, str(entry.resource_id), entry.body, entry.if_match)
        status = "200"
    else:
        stored, _ = writes.patch(conn, access, str(entry.resource_id), entry.body, entry.if_match)
        status = "200"
    meta = stored["meta"]
    return {
        "response": {
            "status": status,
            "location": f"{stored['resourceType']}/{stored['id']}/_history/{meta['versionId']}",
            "etag": versions.etag(int(meta["versionId"])),
            "lastModified": meta["lastUpdated"],
        }
    }


def _failed(error: FHIRError) -> dict[str, Any]:
    return {
        "response": {
            "status": str(error.status),
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": error.code, "diagnostics": error.diagnostics}
                ],
            },
        }
    }


def _response(kind: str, results: list[dict[str, Any]]) -> Response:
    return fhir_response(
        orjson.dumps(
            {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": kind, "entry": results}
        )
    )


def register(bp: Blueprint, store: FHIRStore, guard: Guard) -> None:
    """``POST /fhir``: a transaction or batch Bundle."""

    @bp.post("")
    @bp.post("/")
    def bundle() -> Response:
        grant = guard.grant()
        received = writes.read_json_body(limit=MAX_BUNDLE_BYTES)
        if not isinstance(received, dict) or received.get("resourceType") != "Bundle":
            raise FHIRError(400, "POST to the FHIR base takes a Bundle (type transaction or batch)")
        kind = received.get("type")
        if kind not in ("transaction", "batch"):
            raise FHIRError(
                400, f"Bundle.type must be transaction or batch, not {str(kind)[:40]!r}"
            )
        items = received.get("entry") or []
        if not isinstance(items, list):
            raise FHIRError(400, "Bundle.entry must be a list")
        if len(items) > MAX_ENTRIES:
            raise FHIRError(
                413,
                f"a {kind} may have at most {MAX_ENTRIES} entries (this one has {len(items)}): "
                "split it into several",
                code="too-costly",
            )
        if kind == "batch":
            return _batch(store, guard, grant, items)
        entries: list[Entry] = []
        for index, item in enumerate(items):
            try:
                entries.append(_plan(index, item))
                guard.require(grant, entries[-1].resource_type, _LETTER[entries[-1].method])
            except FHIRError as error:
                raise _named(
                    error, entries[-1].label if len(entries) > index else f"entry[{index}]"
                ) from None
        ids = {
            e.full_url: f"{e.resource_type}/{uuid.uuid4()}"
            for e in entries
            if e.method == "POST" and e.full_url and e.full_url.startswith("urn:uuid:")
        }
        for e in entries:
            if e.method in ("POST", "PUT"):
                e.body = _rewrite(e.body, ids)
        results: dict[int, dict[str, Any]] = {}
        with store.write_transaction() as conn:
            for e in sorted(entries, key=lambda x: _ORDER[x.method]):
                new_id = ids[e.full_url].split("/", 1)[1] if e.full_url in ids else None
                try:
                    results[e.index] = _apply(conn, grant, guard, e, new_id)
                except FHIRError as error:
                    raise _named(error, e.label) from None
        log.info(
            "FHIR: client %s applied a transaction of %d entries", grant.client_id, len(entries)
        )
        return _response("transaction-response", [results[i] for i in range(len(entries))])


def _named(error: FHIRError, label: str) -> FHIRError:
    """The entry's error for the whole transaction, naming the entry."""
    return FHIRError(
        error.status,
        f"{label}: {error.diagnostics} (the transaction was not applied; nothing was written)",
        code=error.code,
    )


def _batch(store: FHIRStore, guard: Guard, grant: AccessGrant, items: list[Any]) -> Response:
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            entry = _plan(index, item)
            with store.write_transaction() as conn:
                results.append(_apply(conn, grant, guard, entry, None))
        except FHIRError as error:
            results.append(_failed(error))
    return _response("batch-response", results)
