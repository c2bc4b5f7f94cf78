"""The ``/fhir`` blueprint: read, search, AuditEvent create and metadata.

Search pages are built by splicing the stored JSON bytes of each resource into
the Bundle (``orjson.Fragment``): no resource is parsed or re-serialised, which
is what keeps a page of 1,000 Observations well under 100 ms.

Paging is by keyset (``_cursor`` holds the sort key and row number of the last
entry), not by offset: a page link keeps meaning the same rows while resources
are added, and deep pages cost the same as the first.

A read of a resource outside what the token may see answers 404 exactly like
an unknown id, so that a patient-scoped token cannot probe which ids exist.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from flask import Blueprint, Response, request

from ..access_grant import GrantLookup
from ..settings import SandboxSettings
from . import bundles, history, operations, searchset, terminology, versions, writes
from .access import Access
from .capability import capability_statement
from .guard import Guard
from .indexing import named_patients
from .outcome import FHIR_JSON, FHIRError, error_response
from .search import JSON_FORMATS, SEARCH_PARAMS
from .store import FHIRStore
from .writes import http_date

log = logging.getLogger(__name__)

#: Largest AuditEvent accepted (real ones are a few KiB).
MAX_CREATE_BYTES = 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
_FORM_TYPE = "application/x-www-form-urlencoded"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fhir_response(body: bytes, status: int = 200, **headers: str) -> Response:
    response = Response(body, status=status, mimetype=FHIR_JSON)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _known_type(resource_type: str) -> None:
    if resource_type not in SEARCH_PARAMS:
        raise FHIRError(
            404,
            f"resource type {resource_type!r} is not supported by this server; "
            f"supported: {', '.join(SEARCH_PARAMS)}",
            code="not-supported",
        )


def _check_format() -> None:
    fmt = request.args.get("_format")
    if fmt is not None and fmt not in JSON_FORMATS:
        raise FHIRError(406, "this server speaks JSON only (_format=json)")


def create_fhir_blueprint(
    store: FHIRStore, lookup_grant: GrantLookup, settings: SandboxSettings
) -> Blueprint:
    """The FHIR R4 server under ``/fhir``, reading grants through ``lookup_grant``."""
    bp = Blueprint("fhir", __name__, url_prefix="/fhir")
    base = settings.fhir_base_url

    guard = Guard(lookup_grant, base)
    access = guard.access

    @bp.before_request
    def query_must_be_utf8() -> None:
        """Refuse a query that is not UTF-8, instead of searching for U+FFFD (Werkzeug's stand-in)."""
        _require_utf8(request.query_string, "the query string")

    @bp.errorhandler(FHIRError)
    def fhir_error(error: FHIRError) -> Response:
        log.info("FHIR %s %s -> %d %s", request.method, request.path, error.status, error.code)
        return error_response(error)

    @bp.get("/metadata")
    def metadata() -> Response:
        _check_format()
        return _fhir_response(orjson.dumps(capability_statement(settings)))

    def search(resource_type: str, params: list[tuple[str, str]]) -> Response:
        return searchset.search(store, guard, resource_type, params)

    @bp.get("/<resource_type>")
    def search_get(resource_type: str) -> Response:
        return search(resource_type, list(request.args.items(multi=True)))

    @bp.post("/<resource_type>/_search")
    def search_post(resource_type: str) -> Response:
        _known_type(resource_type)
        if request.mimetype != _FORM_TYPE:
            raise FHIRError(415, f"POST _search takes a {_FORM_TYPE} body")
        # Cached, so that request.form below parses the same bytes.
        _require_utf8(request.get_data(cache=True), "the form body")
        params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
        return search(resource_type, params)

    @bp.get("/<resource_type>/<resource_id>")
    def read(resource_type: str, resource_id: str) -> Response:
        granted = access(resource_type, "r")
        _check_format()
        if not _ID.match(resource_id):
            raise FHIRError(400, "that is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
        stored = store.read_stored(resource_type, resource_id)
        visible = stored is not None and _visible(store, granted, stored.seq)
        if stored is None or not visible:
            gone = store_deleted(store, granted, resource_id)
            if gone is not None:
                raise FHIRError(410, f"{resource_type}/{resource_id} was deleted (version {gone})")
            raise FHIRError(
                404, f"{resource_type}/{resource_id} is not known or not visible to this token"
            )
        meta = orjson.loads(stored.json).get("meta") or {}
        tag = versions.etag(int(meta.get("versionId") or 1))
        if tag in _etags(request.headers.get("If-None-Match")):
            return _fhir_response(b"", 304, ETag=tag)
        headers = {"ETag": tag}
        if isinstance(meta.get("lastUpdated"), str):
            headers["Last_Modified"] = http_date(meta["lastUpdated"])
        return _fhir_response(stored.json, 200, **headers)

    create_resource = writes.register(bp, store, guard)
    history.register(bp, store, guard)
    bundles.register(bp, store, guard)
    operations.register(bp, store, guard)
    terminology.register(bp, guard)

    @bp.post("/<resource_type>")
    def create(resource_type: str) -> Response:
        _known_type(resource_type)
        if resource_type != "AuditEvent":
            return create_resource(resource_type)
        granted = access(resource_type, "c")
        if request.mimetype not in _JSON_TYPES:
            raise FHIRError(415, "send the AuditEvent as application/fhir+json")
        if request.content_length is not None and request.content_length > MAX_CREATE_BYTES:
            raise FHIRError(413, f"an AuditEvent may be at most {MAX_CREATE_BYTES} bytes")
        body = request.stream.read(MAX_CREATE_BYTES + 1)
        if len(body) > MAX_CREATE_BYTES:
            raise FHIRError(413, f"an AuditEvent may be at most {MAX_CREATE_BYTES} bytes")
        resource = _parse_audit_event(body)
        patient = _audit_patient(resource)
        if granted.patient_only and (
            patient != granted.grant.patient or named_patients(resource) != {granted.grant.patient}
        ):
            raise FHIRError(
                403,
                "a patient-scoped token may only record AuditEvents about its own patient "
                "(entity.what = Patient/<launched patient>) and may name no other patient "
                "anywhere in the event (no other Patient reference, no contained Patient)",
            )
        resource_id, stored = store.create(resource, patient=patient)
        log.info("FHIR: client %s created AuditEvent/%s", granted.grant.client_id, resource_id)
        return _fhir_response(
            stored, 201, Location=f"{base}/AuditEvent/{resource_id}/_history/1", ETag='W/"1"'
        )

    @bp.route("/<resource_type>", methods=["PUT", "DELETE", "PATCH"])
    def type_not_allowed(resource_type: str) -> Response:
        raise FHIRError(
            405, f"{request.method} is not supported here", headers={"Allow": "GET, POST"}
        )

    @bp.post("/<resource_type>/<resource_id>")
    def instance_not_allowed(resource_type: str, resource_id: str) -> Response:
        raise FHIRError(
            405,
            "POST is not supported on a resource: PUT updates it, PATCH patches it",
            headers={"Allow": "GET, PUT, PATCH, DELETE"},
        )

    return bp


def _etags(header: str | None) -> set[str]:
    """The entity tags of an ``If-None-Match`` header (weak or strong, as weak ones)."""
    if not header:
        return set()
    tags = set()
    for part in header.split(","):
        text = part.strip()
        if text.startswith('"'):
            text = "W/" + text
        tags.add(text)
    return tags


def store_deleted(store: FHIRStore, granted: Access, resource_id: str) -> int | None:
    """The deletion version of a resource the token could see before it was deleted."""
    rows = store.query(
        "SELECT version, method, patient, json FROM history WHERE type = ? AND id = ? "
        "ORDER BY version DESC LIMIT 1",
        (granted.resource_type, resource_id),
    )
    if not rows or rows[0][1] != "DELETE":
        return None
    version, _, patient, body = rows[0]
    return int(version) if granted.permits(orjson.loads(body), patient) else None


def _require_utf8(encoded: bytes, where: str) -> None:
    """400 unless percent-decoding ``encoded`` gives UTF-8 (a client's encoding bug otherwise)."""
    try:
        unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise FHIRError(
            400,
            f"{where} is not UTF-8 once percent-decoded: percent-encode the UTF-8 bytes of "
            "each value (e.g. %C3%A9 for \u00e9)",
        ) from None


def _visible(store: FHIRStore, granted: Access, seq: int) -> bool:
    """Whether the row ``seq`` passes the token's visibility clauses (same SQL as search)."""
    clauses = granted.clauses()
    if not clauses:
        return True
    args: list[object] = [seq]
    for c in clauses:
        args.extend(c.args)
    where = " AND ".join(f"({c.sql})" for c in clauses)
    sql = f"SELECT 1 FROM resources r WHERE r.seq = ? AND {where}"  # noqa: S608 (fixed fragments)
    return bool(store.query(sql, args))


def _parse_audit_event(body: bytes) -> dict[str, Any]:
    """The AuditEvent in ``body``, checked for the elements R4 requires."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FHIRError(400, "the body is not valid JSON") from None
    if not isinstance(resource, dict):
        raise FHIRError(400, "the body must be a JSON object (a FHIR resource)")
    if resource.get("resourceType") != "AuditEvent":
        raise FHIRError(400, "resourceType must be 'AuditEvent' at this endpoint")
    problems = []
    if not isinstance(resource.get("type"), dict):
        problems.append("type (a Coding) is required")
    if not isinstance(resource.get("recorded"), str):
        problems.append("recorded (an instant) is required")
    agents = resource.get("agent")
    if not isinstance(agents, list) or not agents or not all(isinstance(a, dict) for a in agents):
        problems.append("agent (a non-empty list) is required")
    source = resource.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("observer"), dict):
        problems.append("source.observer is required")
    entities = resource.get("entity", [])
    if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
        problems.append("entity must be a list of objects")
    if problems:
        raise FHIRError(400, "invalid AuditEvent: " + "; ".join(problems))
    return resource


def _audit_patient(resource: dict[str, Any]) -> str | None:
    """The Patient an AuditEvent is about (first ``entity.what`` to a Patient), if any."""
    for entity in resource.get("entity", []):
        what = entity.get("what")
        reference = what.get("reference") if isinstance(what, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference.removeprefix("Patient/")
    return None
