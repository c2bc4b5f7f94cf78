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
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from flask import Blueprint, Response, request

from ..access_grant import GrantLookup
from ..auth.tokens import CLIENT_ID_ENVIRON_KEY
from ..settings import SandboxSettings
from .access import Access, authorize
from .capability import capability_statement
from .outcome import FHIR_JSON, FHIRError, error_response
from .search import JSON_FORMATS, SEARCH_PARAMS, parse_search
from .store import FHIRStore

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

    def access(resource_type: str, interaction: str) -> Access:
        _known_type(resource_type)
        result = authorize(
            request.headers.get("Authorization"), lookup_grant, resource_type, interaction, base
        )
        # For the sandbox's access log, which names the client of every request.
        request.environ[CLIENT_ID_ENVIRON_KEY] = result.grant.client_id
        return result

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
        granted = access(resource_type, "s")
        query = parse_search(resource_type, params, base)
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
            return _fhir_response(orjson.dumps(bundle))
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
                {
                    "relation": "next",
                    "url": query.link(base, query.cursor_after(last_seq, last_date)),
                }
            )
        prefix = f"{base}/{resource_type}/"
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": _now()},
            "type": "searchset",
            "link": links,
            "entry": [
                {
                    "fullUrl": prefix + rid,
                    "resource": orjson.Fragment(body),
                    "search": {"mode": "match"},
                }
                for _, _, rid, body in rows
            ],
        }
        return _fhir_response(orjson.dumps(bundle))

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

    @bp.get("/<resource_type>/<resource_id>/_history/<version_id>")
    def vread(resource_type: str, resource_id: str, version_id: str) -> Response:
        """Every resource here has exactly version 1 (the ``Location`` of a create)."""
        response = read(resource_type, resource_id)
        if version_id != "1":
            raise FHIRError(
                404, f"{resource_type}/{resource_id} has no version {version_id[:16]!r}"
            )
        return response

    @bp.get("/<resource_type>/<resource_id>")
    def read(resource_type: str, resource_id: str) -> Response:
        granted = access(resource_type, "r")
        _check_format()
        if not _ID.match(resource_id):
            raise FHIRError(400, "that is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
        stored = store.read_stored(resource_type, resource_id)
        visible = stored is not None and _visible(store, granted, stored.seq)
        if stored is None or not visible:
            raise FHIRError(
                404, f"{resource_type}/{resource_id} is not known or not visible to this token"
            )
        return _fhir_response(stored.json, ETag='W/"1"')

    @bp.post("/<resource_type>")
    def create(resource_type: str) -> Response:
        _known_type(resource_type)
        if resource_type != "AuditEvent":
            raise FHIRError(
                405, f"create is not supported for {resource_type}", headers={"Allow": "GET"}
            )
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
            patient != granted.grant.patient or _named_patients(resource) != {granted.grant.patient}
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

    @bp.route("/<resource_type>/<resource_id>", methods=["PUT", "DELETE", "PATCH", "POST"])
    def instance_not_allowed(resource_type: str, resource_id: str) -> Response:
        raise FHIRError(
            405,
            f"{request.method} is not supported: this server is read-only",
            headers={"Allow": "GET"},
        )

    return bp


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


_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?$")


def _named_patients(resource: Any) -> set[str | None]:
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


def _audit_patient(resource: dict[str, Any]) -> str | None:
    """The Patient an AuditEvent is about (first ``entity.what`` to a Patient), if any."""
    for entity in resource.get("entity", []):
        what = entity.get("what")
        reference = what.get("reference") if isinstance(what, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference.removeprefix("Patient/")
    return None
