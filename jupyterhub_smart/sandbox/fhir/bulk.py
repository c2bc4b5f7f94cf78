"""FHIR Bulk Data Access ``$export`` (IG 2.0, with 3.0's partial manifests), strictly.

Endpoints under ``/fhir``:

- kick-off: ``GET|POST /$export``, ``/Patient/$export``, ``/Group/<id>/$export``
  with ``Prefer: respond-async``; 202 and ``Content-Location`` of the status URL;
- status: ``GET /$export-status/<job>`` (202 with ``Retry-After`` and
  ``X-Progress`` while running, 200 and the manifest when done), ``DELETE`` to
  cancel or clean up (202, then 404);
- files: ``GET /$export-file/<job>/<name>?exp=..&sig=..`` (links expire; a new
  status GET issues fresh ones), with ``Range`` and gzip;
- ``GET /Group`` and ``/Group/<id>``: the synthetic cohorts.

Authorization is per type: a Backend Services token exports the types its
``system/`` scopes allow; a user's token exports what it may read (a
``patient/`` token: its patient's compartment only). Types named in ``_type``
that the token may not read become entries of the error file, and a kick-off
that could export nothing at all is a 403. Downloads need a token of the
client that started the job (``requiresAccessToken: true``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Response, request

from ..access_grant import AccessGrant, GrantLookup
from ..auth.tokens import CLIENT_ID_ENVIRON_KEY
from ..settings import SandboxSettings
from .access import authorize, bearer_token
from .bulk_groups import group_resource, members
from .bulk_jobs import Job, JobRunner, TypePlan, instant
from .bulk_options import BulkOptions
from .bulk_params import ExportRequest, pairs_from_parameters, parse_export
from .outcome import FHIR_JSON, FHIRError, error_response, outcome_body
from .search import Clause

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_SLOW_CHUNK = 512


def create_bulk_blueprint(
    store: Any, lookup_grant: GrantLookup, settings: SandboxSettings, options: BulkOptions
) -> Blueprint:
    """The ``$export`` endpoints and the Group cohorts."""
    bp = Blueprint("bulk", __name__, url_prefix="/fhir")
    base = settings.fhir_base_url
    runner = JobRunner(
        store,
        Path(settings.data_dir) / "bulk",
        options.file_resources,
        options.deleted_observations,
    )
    link_key = secrets.token_bytes(32)
    faults = options.faults

    @bp.errorhandler(FHIRError)
    def fhir_error(error: FHIRError) -> Response:
        log.info("bulk %s %s -> %d %s", request.method, request.path, error.status, error.code)
        return error_response(error)

    def client_of(resource_type: str) -> str:
        """Check the token (401 if unusable) and return its client id."""
        granted = authorize(
            request.headers.get("Authorization"), lookup_grant, resource_type, "r", base
        )
        request.environ[CLIENT_ID_ENVIRON_KEY] = granted.grant.client_id
        return granted.grant.client_id

    def active_grant() -> AccessGrant:
        """The grant of the request's bearer token (401 if there is none, or it is not active)."""
        grant = lookup_grant(bearer_token(request.headers.get("Authorization")))
        if grant is None or grant.expires_at <= time.time():
            raise FHIRError(
                401,
                "the access token is unknown, expired or revoked",
                headers={"WWW-Authenticate": 'Bearer realm="sandbox", error="invalid_token"'},
            )
        request.environ[CLIENT_ID_ENVIRON_KEY] = grant.client_id
        return grant

    # -- Group cohorts --------------------------------------------------------

    @bp.get("/Group/<group_id>")
    def read_group(group_id: str) -> Response:
        client_of("Group")
        group = group_resource(store, group_id)
        if group is None:
            raise FHIRError(404, f"Group/{group_id[:64]} is not known")
        return Response(orjson.dumps(group), mimetype=FHIR_JSON)

    @bp.get("/Group")
    def search_groups() -> Response:
        client_of("Group")
        from .bulk_groups import COHORTS

        entries = [
            {
                "fullUrl": f"{base}/Group/{gid}",
                "resource": group_resource(store, gid),
                "search": {"mode": "match"},
            }
            for gid in COHORTS
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
        return Response(orjson.dumps(bundle), mimetype=FHIR_JSON)

    # -- kick-off -------------------------------------------------------------

    def kickoff(level: str, group_id: str | None = None) -> Response:
        prefer = [p.strip().lower() for p in request.headers.get("Prefer", "").split(",")]
        if "respond-async" not in prefer:
            raise FHIRError(400, "$export is asynchronous: send 'Prefer: respond-async'")
        accept = request.headers.get("Accept")
        if accept and not any(t in accept for t in ("application/fhir+json", "*/*")):
            raise FHIRError(406, "$export answers application/fhir+json (send that Accept header)")
        lenient = "handling=lenient" in prefer
        grant = active_grant()
        if request.method == "POST":
            if request.mimetype not in ("application/fhir+json", "application/json"):
                raise FHIRError(
                    415, "a POST kick-off takes a Parameters resource as application/fhir+json"
                )
            try:
                body = orjson.loads(request.get_data())
            except orjson.JSONDecodeError:
                raise FHIRError(400, "the kick-off body is not valid JSON") from None
            pairs = list(request.args.items(multi=True)) + pairs_from_parameters(body)
        else:
            pairs = list(request.args.items(multi=True))
        parsed = parse_export(
            level,
            pairs,
            lenient=lenient,
            via_post=request.method == "POST",
            fhir_base=base,
            reject_repeated=faults.active("reject-repeated"),
        )
        patients = _patients(parsed, group_id)
        plans, refused = _plans(parsed, patients)
        if faults.fire("kickoff-429"):
            raise FHIRError(
                429,
                "too many requests (injected fault)",
                code="throttled",
                headers={"Retry-After": str(options.retry_after)},
            )
        running = runner.running_job_of(grant.client_id)
        if running is not None:
            raise FHIRError(
                429,
                "this client already has an export in progress; wait for it or DELETE it",
                code="throttled",
                headers={"Retry-After": str(options.retry_after)},
            )
        job = runner.start(grant.client_id, request.url, parsed, plans, refused)
        log.info(
            "bulk export %s started by client %s: %s level, %d types",
            job.id[:8],
            grant.client_id,
            level,
            len(plans),
        )
        notes = (
            [f"ignored (handling=lenient): {', '.join(parsed.ignored)}"] if parsed.ignored else []
        )
        body_bytes = outcome_body(
            "; ".join(["export accepted", *notes]), "informational", severity="information"
        )
        response = Response(body_bytes, status=202, mimetype=FHIR_JSON)
        response.headers["Content-Location"] = f"{base}/$export-status/{job.id}"
        return response

    def _patients(parsed: ExportRequest, group_id: str | None) -> list[str] | None:
        """Patients the export is limited to (``None``: no limit beyond the token's)."""
        limit: list[str] | None = None
        if group_id is not None:
            client_of("Group")
            limit = members(store, group_id)
            if limit is None:
                raise FHIRError(404, f"Group/{group_id[:64]} is not known")
        if parsed.patients:
            if limit is not None:
                outside = [p for p in parsed.patients if p not in set(limit)]
                if outside:
                    raise FHIRError(400, f"not members of the group: {', '.join(outside[:5])}")
            else:
                marks = ",".join("?" for _ in parsed.patients)
                sql = f"SELECT id FROM resources WHERE type = 'Patient' AND id IN ({marks})"  # noqa: S608
                known = {r[0] for r in store.query(sql, parsed.patients)}
                unknown = [p for p in parsed.patients if p not in known]
                if unknown:
                    raise FHIRError(400, f"unknown patients: {', '.join(unknown[:5])}")
            limit = parsed.patients
        return limit

    def _plans(
        parsed: ExportRequest, patients: list[str] | None
    ) -> tuple[list[TypePlan], list[dict[str, Any]]]:
        plans: list[TypePlan] = []
        refused: list[dict[str, Any]] = []
        for resource_type in parsed.types:
            try:
                granted = authorize(
                    request.headers.get("Authorization"), lookup_grant, resource_type, "r", base
                )
            except FHIRError as exc:
                if exc.status != 403:
                    raise
                refused.append(
                    orjson.loads(
                        outcome_body(
                            f"{resource_type} was not exported: {exc.diagnostics}", "forbidden"
                        )
                    )
                )
                continue
            clauses = list(granted.clauses())
            if patients is not None:
                marks = ",".join("?" for _ in patients) or "NULL"
                clauses.append(Clause(f"r.patient IN ({marks})", tuple(patients)))
            plans.append(
                TypePlan(resource_type, clauses, parsed.type_filters.get(resource_type, []))
            )
        if not plans:
            raise FHIRError(
                403,
                "the token's scopes allow none of the requested types: "
                + "; ".join(o["issue"][0]["diagnostics"] for o in refused[:3]),
            )
        return plans, refused

    @bp.route("/$export", methods=["GET", "POST"])
    def export_system() -> Response:
        return kickoff("system")

    @bp.route("/Patient/$export", methods=["GET", "POST"])
    def export_patients() -> Response:
        return kickoff("patient")

    @bp.route("/Group/<group_id>/$export", methods=["GET", "POST"])
    def export_group(group_id: str) -> Response:
        return kickoff("group", group_id)

    # -- status ---------------------------------------------------------------

    def own_job(job_id: str) -> Job:
        grant = active_grant()
        job = runner.get(job_id)
        if job is None or job.client_id != grant.client_id:
            raise FHIRError(404, "no such export job (finished jobs disappear once DELETEd)")
        return job

    @bp.get("/$export-status/<job_id>")
    def status(job_id: str) -> Response:
        job = own_job(job_id)
        if faults.fire("status-429"):
            raise FHIRError(
                429,
                "polling too often (injected fault)",
                code="throttled",
                headers={"Retry-After": str(options.retry_after)},
            )
        if faults.fire("status-500"):
            raise FHIRError(500, "internal error (injected fault)", code="exception")
        if faults.fire("status-transient"):
            raise FHIRError(
                500, "the export store is busy; retry (injected fault)", code="transient"
            )
        if job.failed:
            raise FHIRError(500, job.failed, code="exception")
        elapsed = time.monotonic() - job.started
        if job.running or elapsed < options.job_seconds or faults.fire("forever"):
            response = Response(b"", status=202)
            response.headers["X-Progress"] = job.progress()
            if faults.fire("retry-after-date"):
                response.headers["Retry-After"] = formatdate(
                    time.time() + options.retry_after, usegmt=True
                )
            else:
                response.headers["Retry-After"] = str(options.retry_after)
            return response
        if faults.fire("outcome-manifest"):
            return Response(
                outcome_body("no manifest (injected fault)", "processing"), mimetype=FHIR_JSON
            )
        expires = int(time.time()) + options.link_lifetime
        if faults.fire("expire"):
            expires = int(time.time()) - 1
        manifest = _manifest(job, expires)
        response = Response(orjson.dumps(manifest), mimetype="application/json")
        response.headers["Expires"] = formatdate(expires, usegmt=True)
        return response

    def _link(job: Job, name: str, expires: int) -> str:
        signature = hmac.new(
            link_key, f"{job.id}/{name}/{expires}".encode(), hashlib.sha256
        ).hexdigest()
        return f"{base}/$export-file/{job.id}/{name}?" + urlencode(
            {"exp": expires, "sig": signature}
        )

    def _manifest(job: Job, expires: int) -> dict[str, Any]:
        outputs = [f for f in job.files if f.kind == "output"]
        page_size = (
            options.manifest_page if job.request.allow_partial_manifests else len(outputs) or 1
        )
        page_text = request.args.get("page", "1")
        if not (page_text.isascii() and page_text.isdigit()) or int(page_text) < 1:
            raise FHIRError(400, "page must be a positive whole number")
        page = int(page_text)
        start = (page - 1) * page_size
        if start and start >= len(outputs):
            raise FHIRError(404, f"the manifest has no page {page}")
        manifest: dict[str, Any] = {
            "transactionTime": instant(job.transaction_time),
            "request": job.request_url,
            "requiresAccessToken": True,
            "output": [
                {"type": f.type, "url": _link(job, f.name, expires), "count": f.count}
                for f in outputs[start : start + page_size]
            ],
            "error": [],
        }
        if page == 1:
            manifest["deleted"] = [
                {"type": f.type, "url": _link(job, f.name, expires)}
                for f in job.files
                if f.kind == "deleted"
            ]
            manifest["error"] = [
                {"type": f.type, "url": _link(job, f.name, expires), "count": f.count}
                for f in job.files
                if f.kind == "error"
            ]
        if start + page_size < len(outputs):
            manifest["link"] = [
                {"relation": "next", "url": f"{base}/$export-status/{job.id}?page={page + 1}"}
            ]
        return manifest

    @bp.delete("/$export-status/<job_id>")
    def delete(job_id: str) -> Response:
        job = own_job(job_id)
        runner.delete(job.id)
        log.info("bulk export %s deleted by client %s", job.id[:8], job.client_id)
        return Response(
            outcome_body("export deleted", "informational", severity="information"),
            status=202,
            mimetype=FHIR_JSON,
        )

    # -- files ----------------------------------------------------------------

    @bp.get("/$export-file/<job_id>/<name>")
    def download(job_id: str, name: str) -> Response:
        job = own_job(job_id)
        expires_text = request.args.get("exp", "")
        signature = request.args.get("sig", "")
        expected = hmac.new(
            link_key, f"{job.id}/{name}/{expires_text}".encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(signature, expected) or not expires_text.isdigit():
            raise FHIRError(404, "no such file link")
        if int(expires_text) <= time.time():
            raise FHIRError(
                410,
                "this file link has expired: GET the status URL again for fresh links",
                code="expired",
            )
        if faults.fire("file-503"):
            raise FHIRError(
                503,
                "file store unavailable (injected fault)",
                code="transient",
                headers={"Retry-After": "1"},
            )
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        path = runner.file_path(job, name, gzipped)
        if path is None:
            raise FHIRError(404, "no such file in this export")
        size = path.stat().st_size
        start, end = 0, size
        status_code = 200
        ranged = request.range if not faults.active("no-range") else None
        if ranged is not None:
            bounds = (
                ranged.range_for_length(size)
                if ranged.units == "bytes" and len(ranged.ranges) == 1
                else None
            )
            if bounds is None:
                response = error_response(
                    FHIRError(416, "only one satisfiable byte range is supported")
                )
                response.headers["Content-Range"] = f"bytes */{size}"
                return response
            start, end = bounds
            status_code = 206
        truncate = faults.fire("truncate")
        slow = faults.fire("slow")
        response = Response(
            _stream(path, start, end, truncate=truncate, slow=slow),
            status=status_code,
            mimetype="application/fhir+ndjson",
            direct_passthrough=True,
        )
        response.headers["Content-Length"] = str(end - start)
        response.headers["Accept-Ranges"] = "bytes"
        if status_code == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if gzipped:
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp


def _stream(path: Path, start: int, end: int, *, truncate: bool, slow: bool) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of ``path``; a truncated stream raises halfway (waitress then closes)."""
    stop = start + (end - start) // 2 if truncate else end
    chunk = _SLOW_CHUNK if slow else _CHUNK
    with path.open("rb") as handle:
        handle.seek(start)
        position = start
        while position < stop:
            data = handle.read(min(chunk, stop - position))
            if not data:
                break
            position += len(data)
            yield data
            if slow:
                time.sleep(0.005)
    if truncate:
        raise ConnectionAbortedError("truncated on purpose (injected fault)")
