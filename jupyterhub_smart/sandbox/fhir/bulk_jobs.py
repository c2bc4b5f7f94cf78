"""Export jobs: a background thread writes NDJSON files; the status URL reports them.

A job belongs to the client that started it. Its files are written under the
sandbox's data directory (``bulk/<job id>/``) by one thread per job, streaming
rows from SQLite: a resource is parsed only when ``_since``, ``_until`` or
``_elements`` need it, otherwise its stored bytes are copied as they are.
Jobs live in memory: a restarted sandbox has forgotten them (its clients see
404 on the status URL, as after a DELETE).
"""

from __future__ import annotations

import gzip
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .bulk_params import ExportRequest
from .search import Clause
from .store import FHIRStore

log = logging.getLogger(__name__)

#: When the synthetic deletions (``BulkOptions.deleted_observations``) happened.
DELETED_AT = datetime(2025, 7, 2, tzinfo=timezone.utc)
_MANDATORY = frozenset({"resourceType", "id", "meta"})
_SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}


def instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class OutputFile:
    """One written file of a job."""

    name: str
    type: str
    count: int
    kind: str  # "output", "deleted" or "error"


@dataclass
class TypePlan:
    """What to export of one type: visibility and filter clauses."""

    resource_type: str
    clauses: list[Clause]
    #: Alternative ``_typeFilter`` clause sets (OR-ed); empty means no filter.
    filters: list[list[Clause]] = field(default_factory=list)


#: How long a finished job that no status poll has reported still blocks its client.
UNPOLLED_GRACE_SECONDS = 5.0


@dataclass
class Job:
    """One export job and its progress."""

    id: str
    client_id: str
    request_url: str
    request: ExportRequest
    plans: list[TypePlan]
    #: OperationOutcome issues for types the token may not export.
    refused: list[dict[str, Any]]
    directory: Path
    transaction_time: datetime
    started: float
    files: list[OutputFile] = field(default_factory=list)
    done_types: int = 0
    resources: int = 0
    finished: float | None = None
    failed: str | None = None
    deleted: bool = False
    #: A status poll has answered 200 with the manifest.
    reported_complete: bool = False

    @property
    def running(self) -> bool:
        return self.finished is None and self.failed is None and not self.deleted

    @property
    def in_progress(self) -> bool:
        """Whether the job still counts against the client's one-export limit.

        That is while its files are written and then until a status poll has
        told the client it is complete (the status URL answers 202 for at least
        ``job_seconds``, and a client must not be refused a new export it could
        not know it may start), unless it is deleted or has failed. A finished
        job nobody polls (its client crashed right after the kick-off) stops
        counting after ``UNPOLLED_GRACE_SECONDS``, so that client can start again.
        """
        if self.reported_complete or self.deleted or self.failed is not None:
            return False
        return self.finished is None or time.monotonic() - self.finished < UNPOLLED_GRACE_SECONDS

    def progress(self) -> str:
        """The ``X-Progress`` text (under 100 characters, as the IG requires)."""
        return (f"{self.done_types} of {len(self.plans)} types, {self.resources} resources")[:99]


class JobRunner:
    """Starts, tracks and deletes export jobs."""

    def __init__(
        self, store: FHIRStore, root: Path, file_resources: int, deleted_observations: int
    ) -> None:
        self.store = store
        self.root = root
        self.file_resources = max(1, file_resources)
        self.deleted_observations = deleted_observations
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._gzip_lock = threading.Lock()
        shutil.rmtree(root, ignore_errors=True)  # jobs do not survive a restart

    # -- lifecycle ------------------------------------------------------------

    def running_job_of(self, client_id: str) -> Job | None:
        """The client's export still in progress, if any."""
        with self._lock:
            return next(
                (j for j in self._jobs.values() if j.client_id == client_id and j.in_progress),
                None,
            )

    def start(
        self,
        client_id: str,
        request_url: str,
        request: ExportRequest,
        plans: list[TypePlan],
        refused: list[dict[str, Any]],
    ) -> Job:
        """Register a job and start writing its files in a thread."""
        job_id = uuid.uuid4().hex
        job = Job(
            id=job_id,
            client_id=client_id,
            request_url=request_url,
            request=request,
            plans=plans,
            refused=refused,
            directory=self.root / job_id,
            transaction_time=datetime.now(timezone.utc),
            started=time.monotonic(),
        )
        job.directory.mkdir(parents=True)
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(
            target=self._run, args=(job,), name=f"export-{job_id[:8]}", daemon=True
        ).start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return None if job is None or job.deleted else job

    def delete(self, job_id: str) -> bool:
        """Cancel or clean up a job; False if there is none (already deleted)."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.deleted = True
        shutil.rmtree(job.directory, ignore_errors=True)
        return True

    # -- files ----------------------------------------------------------------

    def file_path(self, job: Job, name: str, gzipped: bool) -> Path | None:
        """Path of a job's file (its gzip twin, made on first request, if ``gzipped``)."""
        if not any(f.name == name for f in job.files):
            return None
        path = job.directory / name
        if not gzipped:
            return path
        packed = path.with_name(name + ".gz")
        with self._gzip_lock:
            if not packed.exists():
                tmp = packed.with_name(packed.name + ".tmp")
                with path.open("rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                tmp.replace(packed)
        return packed

    # -- the writer thread ----------------------------------------------------

    def _run(self, job: Job) -> None:
        try:
            for plan in job.plans:
                self._write_type(job, plan)
                job.done_types += 1
            self._write_deleted(job)
            self._write_errors(job)
            job.finished = time.monotonic()
            log.info(
                "bulk export %s for client %s: %d resources in %d files",
                job.id[:8],
                job.client_id,
                job.resources,
                len(job.files),
            )
        except Exception as exc:  # the job fails; the status URL says so
            if not job.deleted:
                log.error("bulk export %s failed: %s", job.id[:8], type(exc).__name__)
                job.failed = "the export failed; see the sandbox log"

    def _rows(self, job: Job, plan: TypePlan) -> Iterator[bytes]:
        where = [Clause("r.type = ?", (plan.resource_type,)), *plan.clauses]
        request = job.request
        if request.level != "system":
            where.append(Clause("r.patient IS NOT NULL"))
        if plan.filters:
            alternatives = []
            args: list[object] = []
            for filters in plan.filters:
                alternatives.append(" AND ".join(f"({c.sql})" for c in filters) or "1")
                for c in filters:
                    args.extend(c.args)
            where.append(Clause(" OR ".join(f"({a})" for a in alternatives), tuple(args)))
        # Deleted on DELETED_AT: still there in a snapshot ``_until`` an earlier instant.
        deleted = (
            self._deleted_seqs()
            if plan.resource_type == "Observation"
            and (request.until is None or request.until >= DELETED_AT)
            else frozenset()
        )
        sql_args: list[object] = []
        for c in where:
            sql_args.extend(c.args)
        sql = (
            "SELECT r.seq, r.json FROM resources r WHERE "  # noqa: S608 (fixed fragments)
            + " AND ".join(f"({c.sql})" for c in where)
            + " ORDER BY r.seq"
        )
        elements = _elements_for(request.elements, plan.resource_type)
        parse = request.since is not None or request.until is not None or elements is not None
        for seq, body in self.store.stream(sql, sql_args):
            if job.deleted:
                return
            if seq in deleted:
                continue
            if not parse:
                yield bytes(body)
                continue
            resource = orjson.loads(body)
            updated = _last_updated(resource)
            if updated is not None:
                if request.since is not None and updated <= request.since:
                    continue
                if request.until is not None and updated > request.until:
                    continue
                if updated > job.transaction_time:
                    continue
            if elements is not None:
                resource = _subset(resource, elements)
            yield orjson.dumps(resource)

    def _write_type(self, job: Job, plan: TypePlan) -> None:
        index = 0
        handle: BinaryIO | None = None
        count = 0
        name = ""
        for body in self._rows(job, plan):
            if handle is None or count >= self.file_resources:
                if handle is not None:
                    handle.close()
                    job.files.append(OutputFile(name, plan.resource_type, count, "output"))
                index += 1
                name = f"{plan.resource_type}.{index:04d}.ndjson"
                handle = (job.directory / name).open("wb")
                count = 0
            handle.write(body)
            handle.write(b"\n")
            count += 1
            job.resources += 1
        if handle is not None:
            handle.close()
            job.files.append(OutputFile(name, plan.resource_type, count, "output"))

    def _deleted_seqs(self) -> frozenset[int]:
        if not self.deleted_observations:
            return frozenset()
        rows = self.store.query(
            "SELECT seq FROM resources WHERE type = 'Observation' ORDER BY seq DESC LIMIT ?",
            (self.deleted_observations,),
        )
        return frozenset(r[0] for r in rows)

    def _write_deleted(self, job: Job) -> None:
        """A transaction Bundle of DELETEs for resources deleted since ``_since``."""
        request = job.request
        plans = {p.resource_type: p for p in job.plans}
        if (
            request.since is None
            or request.since >= DELETED_AT
            or "Observation" not in plans
            or not self.deleted_observations
        ):
            return
        seqs = sorted(self._deleted_seqs())
        plan = plans["Observation"]
        where = " AND ".join(f"({c.sql})" for c in plan.clauses) or "1"
        args: list[object] = []
        for c in plan.clauses:
            args.extend(c.args)
        marks = ",".join("?" for _ in seqs)
        sql = f"SELECT r.id FROM resources r WHERE r.seq IN ({marks}) AND {where}"  # noqa: S608
        if request.level != "system":
            sql += " AND r.patient IS NOT NULL"
        ids = [row[0] for row in self.store.query(sql, [*seqs, *args])]
        if not ids:
            return
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"request": {"method": "DELETE", "url": f"Observation/{rid}"}} for rid in ids
            ],
        }
        name = "deleted.0001.ndjson"
        (job.directory / name).write_bytes(orjson.dumps(bundle) + b"\n")
        job.files.append(OutputFile(name, "Bundle", 1, "deleted"))

    def _write_errors(self, job: Job) -> None:
        if not job.refused:
            return
        name = "errors.0001.ndjson"
        with (job.directory / name).open("wb") as handle:
            for outcome in job.refused:
                handle.write(orjson.dumps(outcome) + b"\n")
        job.files.append(OutputFile(name, "OperationOutcome", len(job.refused), "error"))


def _last_updated(resource: dict[str, Any]) -> datetime | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _elements_for(elements: list[str], resource_type: str) -> frozenset[str] | None:
    """Root elements to keep for ``resource_type``; ``None`` when ``_elements`` was not given."""
    if not elements:
        return None
    keep = set()
    for element in elements:
        owner, _, name = element.rpartition(".")
        if not owner or owner == resource_type:
            keep.add(name)
    return frozenset(keep)


def _subset(resource: dict[str, Any], keep: frozenset[str]) -> dict[str, Any]:
    """Only the mandatory and requested root elements, tagged SUBSETTED."""
    subset = {k: v for k, v in resource.items() if k in _MANDATORY or k in keep}
    meta = dict(subset.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    subset["meta"] = meta
    return subset
