"""One bulk export from kick-off to Parquet: the steps in order, and resume.

:func:`run_export` is what the CLI, :func:`jupyterhub_smart.bulk.export` and
the notebook call. It takes the per-server lock, loads or creates the state,
kicks off (or, on ``--resume``, picks up the status URL), polls, checks the
manifest and its pages, downloads every file in parallel, applies
``deleted[]`` and the run's updates to earlier runs' Parquet, summarises the
error files, and DELETEs the server job (unless asked to keep it).
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from . import manifest as manifest_mod
from .download import Downloader, Progress
from .errors import EXIT_OK, EXIT_PARTIAL, BudgetExceeded, BulkError, Interrupted
from .kickoff import ExportSpec, kickoff
from .output import apply_replacements, deleted_ids, ids_of_run
from .poll import poll
from .result import ExportResult
from .state import ExportState, FileState, StateFile, default_lock_dir, server_lock
from .tls import TLSOnlyAuth, require_tls

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run an export (as opposed to what to export: :class:`ExportSpec`)."""

    out: Path
    resume: bool = False
    cancel: bool = False
    keep_server_job: bool = False
    parallel: int = 4
    timeout: float | None = None
    since_auto: bool = False
    trusted_origins: frozenset[str] = frozenset()
    view_definitions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock_dir: Path | None = None
    chunk_lines: int = 5_000
    on_progress: Callable[[str], None] = lambda text: None
    on_bytes: Callable[[Progress], None] = lambda p: None
    audit: Callable[[str, str, dict[str, Any]], None] = lambda action, outcome, details: None


def run_export(
    http: httpx.Client,
    auth: httpx.Auth,
    fhir_url: str,
    client_id: str,
    spec: ExportSpec,
    options: RunOptions,
) -> ExportResult:
    """Run (or resume, or cancel) one export into ``options.out``."""
    deadline = time.monotonic() + (
        options.timeout if options.timeout is not None else 10 * 365 * 86400
    )
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    state_file = StateFile(out)
    with server_lock(
        options.lock_dir or default_lock_dir(),
        fhir_url,
        client_id,
        deadline=deadline,
        on_wait=lambda: options.on_progress(
            "waiting for this client's other export at this server"
        ),
    ):
        previous = state_file.load()
        if options.cancel:
            return _cancel(http, auth, fhir_url, previous, state_file, options)
        unfinished = previous is not None and previous.status in ("kicked-off", "downloading")
        if unfinished and not options.resume:
            raise BulkError(
                f"{out} holds an unfinished export: continue it with --resume, or --cancel it"
            )
        if options.resume and not unfinished:
            raise BulkError(f"{out} holds no unfinished export to resume")
        if unfinished:
            assert previous is not None
            state = previous
        else:
            if options.since_auto:
                spec.since = previous.transaction_time if previous is not None else None
            state = ExportState(
                fhir_url=fhir_url,
                client_id=client_id,
                run=datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                + "-"
                + uuid.uuid4().hex[:6],
                level=spec.level,
                group=spec.group,
                types=list(spec.types),
                since=spec.since,
                history=list(previous.history) if previous is not None else [],
            )
        try:
            return _run(
                http, auth, fhir_url, spec, options, state, state_file, deadline, resumed=unfinished
            )
        except Interrupted:
            state_file.save(state)
            raise
        except BudgetExceeded:
            state_file.save(state)
            options.audit(
                "bulk-export-failed",
                "failure",
                _audit_details(state, "time budget ran out; resumable"),
            )
            raise
        except BulkError as exc:
            state_file.save(state)
            options.audit("bulk-export-failed", "failure", _audit_details(state, str(exc)))
            raise


def _run(
    http: httpx.Client,
    auth: httpx.Auth,
    fhir_url: str,
    spec: ExportSpec,
    options: RunOptions,
    state: ExportState,
    state_file: StateFile,
    deadline: float,
    *,
    resumed: bool,
) -> ExportResult:
    if state.status_url is None:
        options.audit("bulk-export-started", "success", _audit_details(state))
        state.status_url = kickoff(http, auth, fhir_url, spec, deadline=deadline)
        state.status = "kicked-off"
        state_file.save(state)  # kept: `--resume --trust-origin ORIGIN` can still follow it
    check_status_url(state.status_url, fhir_url, options.trusted_origins, auth)
    lock = threading.Lock()

    def refresh() -> None:
        """Fetch the manifest again (fresh links) and update every file's URL by key."""
        with lock:
            _take_manifest(http, auth, fhir_url, state, options, deadline)
            state_file.save(state)

    if state.status == "kicked-off":
        _take_manifest(http, auth, fhir_url, state, options, deadline)
        state.status = "downloading"
        state_file.save(state)
    progress = Progress(on_change=options.on_bytes)
    stop = threading.Event()
    downloader = Downloader(
        http=http,
        auth=auth,
        out=options.out,
        state=state,
        state_file=state_file,
        refresh_manifest=refresh,
        progress=progress,
        stop=stop,
        view_definitions=options.view_definitions,
        chunk_lines=options.chunk_lines,
    )
    pending = [f for f in state.files.values() if not f.done]
    failures: list[str] = []
    with ThreadPoolExecutor(
        max_workers=max(1, options.parallel), thread_name_prefix="bulk-download"
    ) as pool:
        futures = {pool.submit(downloader.download, f): f for f in pending}
        try:
            while futures:
                done, _ = wait(list(futures), timeout=0.5, return_when=FIRST_EXCEPTION)
                for future in done:
                    f = futures.pop(future)
                    exc = future.exception()
                    if isinstance(exc, Interrupted):
                        raise exc
                    if exc is not None:
                        failures.append(
                            f"{f.key}: {exc}" if not isinstance(exc, BulkError) else str(exc)
                        )
                if time.monotonic() > deadline:
                    raise BudgetExceeded(
                        "the --timeout budget ran out during downloads; continue with --resume"
                    )
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    if failures:
        state_file.save(state)
        raise BulkError("some files could not be downloaded: " + "; ".join(failures[:5]))
    summary = _finish(state, options)
    state.status = "complete"
    state.history.append({"run": state.run, "transactionTime": state.transaction_time})
    state.summary = summary
    state_file.save(state)
    if not options.keep_server_job and state.status_url:
        _delete(http, auth, state.status_url)
    options.audit(
        "bulk-export-completed",
        "success" if summary["exit_code"] == EXIT_OK else "failure",
        _audit_details(state),
    )
    return ExportResult(options.out, summary)


def check_status_url(
    url: str | None, fhir_url: str, trusted: frozenset[str], auth: httpx.Auth | None = None
) -> None:
    """Refuse a status URL off the kick-off's origin (and the trusted ones) before it gets a token.

    The status URL comes from the server's ``Content-Location``; polling it, and
    DELETE, send the bearer token, which only the FHIR server's origin (or one
    the user trusts with ``--trust-origin``) may receive. The message names the
    origin only: a path or query could hold a signature.
    """
    if url is None:
        return
    if isinstance(auth, TLSOnlyAuth):  # plain http says so first (it is refused either way)
        require_tls(url, "status URL", auth.allow_insecure_http)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BulkError("the status URL (Content-Location) is not an absolute http(s) URL")
    if not manifest_mod.on_trusted_origin(url, fhir_url, trusted):
        raise BulkError(
            f"the status URL (Content-Location) is on {manifest_mod.origin(url)}, not on the FHIR "
            f"server's origin {manifest_mod.origin(fhir_url)}; refusing to send it a token "
            "(trust it with --trust-origin)"
        )


def _take_manifest(
    http: httpx.Client,
    auth: httpx.Auth,
    fhir_url: str,
    state: ExportState,
    options: RunOptions,
    deadline: float,
) -> None:
    assert state.status_url is not None
    check_status_url(state.status_url, fhir_url, options.trusted_origins, auth)
    first = poll(http, auth, state.status_url, deadline=deadline, on_progress=options.on_progress)
    pages = manifest_mod.fetch_pages(http, auth, first, fhir_url, options.trusted_origins)
    files = manifest_mod.files_of(pages, fhir_url, options.trusted_origins)
    state.transaction_time = first["transactionTime"]
    state.requires_access_token = bool(first["requiresAccessToken"])
    state.manifest_request = first["request"]
    for mf in files:
        known = state.files.get(mf.key)
        if known is None:
            state.files[mf.key] = FileState(mf.key, mf.kind, mf.type, mf.url, mf.count)
        else:
            known.url = mf.url


def _read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [line for line in data.splitlines() if line.strip()]


def _finish(state: ExportState, options: RunOptions) -> dict[str, Any]:
    """Apply deletions and updates to earlier runs; summarise errors; build the summary."""
    out = options.out
    deleted: list[tuple[str, str]] = []
    for f in state.files.values():
        if f.kind == "deleted" and f.name:
            deleted.extend(deleted_ids(_read_lines(out / f.name)))
    if deleted:
        table = pa.table(
            {"resource_type": [t for t, _ in deleted], "resource_id": [i for _, i in deleted]}
        )
        (out / "deleted" / "parquet").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "deleted" / "parquet" / f"part-{state.run}.parquet")
    removed: dict[str, set[str]] = {}
    for resource_type, resource_id in deleted:
        removed.setdefault(resource_type, set()).add(resource_id)
    output_types = sorted({f.type for f in state.files.values() if f.kind == "output"})
    if len(state.history) > 0:
        for resource_type in output_types:
            removed.setdefault(resource_type, set()).update(
                ids_of_run(out / "parquet", state.run, resource_type)
            )
    replaced = apply_replacements(out / "parquet", state.run, removed) if removed else 0
    issues: dict[str, int] = {}
    server_errors = 0
    for f in state.files.values():
        if f.kind == "error" and f.name:
            for line in _read_lines(out / f.name):
                outcome = orjson.loads(line)
                for issue in outcome.get("issue") or []:
                    severity = issue.get("severity", "error")
                    key = f"{severity}:{issue.get('code', 'unknown')}"
                    issues[key] = issues.get(key, 0) + 1
                    if severity in ("error", "fatal"):
                        server_errors += 1
    resources: dict[str, int] = {}
    for f in state.files.values():
        if f.kind == "output":
            resources[f.type] = resources.get(f.type, 0) + f.lines - f.invalid
    invalid = sum(f.invalid for f in state.files.values())
    problems = [f"{f.key}: {f.problem}" for f in state.files.values() if f.problem]
    partial = bool(server_errors or invalid or problems)
    return {
        "status": "complete",
        "exit_code": EXIT_PARTIAL if partial else EXIT_OK,
        "out": str(out),
        "run": state.run,
        "level": state.level,
        "group": state.group,
        "types": state.types,
        "since": state.since,
        "transactionTime": state.transaction_time,
        "files": sum(1 for f in state.files.values() if f.kind == "output"),
        "bytes": sum(f.raw_bytes for f in state.files.values()),
        "resources": resources,
        "deleted": len(deleted),
        "replaced_rows": replaced,
        "server_errors": issues,
        "invalid_lines": invalid,
        "problems": problems,
    }


def _delete(http: httpx.Client, auth: httpx.Auth, status_url: str) -> bool:
    """DELETE the server job (cleanup or cancel); False if the server refused or failed."""
    try:
        response = http.delete(status_url, auth=auth, follow_redirects=False)
    except httpx.HTTPError:
        return False
    return response.status_code in (200, 202, 204, 404)


def _cancel(
    http: httpx.Client,
    auth: httpx.Auth,
    fhir_url: str,
    state: ExportState | None,
    state_file: StateFile,
    options: RunOptions,
) -> ExportResult:
    if (
        state is None
        or state.status_url is None
        or state.status not in ("kicked-off", "downloading")
    ):
        raise BulkError(f"{options.out} holds no running export to cancel")
    check_status_url(state.status_url, fhir_url, options.trusted_origins, auth)
    if not _delete(http, auth, state.status_url):
        raise BulkError("the server did not accept the DELETE of the export job")
    state.status = "cancelled"
    state.summary = {
        "status": "cancelled",
        "exit_code": EXIT_OK,
        "out": str(options.out),
        "run": state.run,
    }
    state_file.save(state)
    options.audit("bulk-export-cancelled", "success", _audit_details(state))
    return ExportResult(options.out, state.summary)


def _audit_details(state: ExportState, reason: str | None = None) -> dict[str, Any]:
    return {
        "level": state.level,
        "types": state.types,
        "group": state.group,
        "files": sum(1 for f in state.files.values() if f.kind == "output"),
        "reason": reason,
    }
