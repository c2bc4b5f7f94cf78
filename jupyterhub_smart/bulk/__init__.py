"""FHIR Bulk Data export straight into Parquet: resumable, with SMART Backend Services.

::

    from jupyterhub_smart import bulk
    result = bulk.export(
        fhir_url="https://ehr.example.org/fhir", client_id="my-backend", key="key.pem",
        group="cohort-1", types=["Patient", "Observation"], out="export/",
    )
    result.to_pandas("Observation")
    result.duckdb().sql('SELECT code, count(*) FROM "Observation" GROUP BY code')

Modules, one job each: :mod:`.auth` (tokens), :mod:`.kickoff`, :mod:`.poll`,
:mod:`.manifest`, :mod:`.download`, :mod:`.output` (Parquet and views),
:mod:`.state` (``export.json`` and the per-server lock), :mod:`.run` (the
steps in order), :mod:`.cli`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import BudgetExceeded, BulkError, Interrupted
from .kickoff import ExportSpec
from .result import ExportResult

__all__ = ["BudgetExceeded", "BulkError", "ExportResult", "ExportSpec", "Interrupted", "export"]


def _types(types: str | Iterable[str] | None) -> list[str]:
    if types is None:
        return []
    items = [types] if isinstance(types, str) else list(types)
    return list(dict.fromkeys(t.strip() for item in items for t in item.split(",") if t.strip()))


def export(
    *,
    fhir_url: str,
    out: str | Path,
    client_id: str | None = None,
    key: str | Path | None = None,
    auth: Any = None,
    scope: str | None = None,
    patient_level: bool = False,
    group: str | None = None,
    types: str | Iterable[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    type_filters: Iterable[str] = (),
    elements: Iterable[str] = (),
    patients: Iterable[str] = (),
    views: Iterable[str | Mapping[str, Any]] = (),
    allow_partial_manifests: bool = False,
    include_associated_data: Iterable[str] = (),
    organize_output_by: str | None = None,
    param_style: str = "comma",
    method: str = "GET",
    lenient: bool = False,
    parallel: int = 4,
    timeout: float | None = None,
    resume: bool = False,
    cancel: bool = False,
    keep_server_job: bool = False,
    trusted_origins: Iterable[str] = (),
    audit_log: str | Path | None = None,
    lock_dir: str | Path | None = None,
    http: Any = None,
    work_dir: str | Path | None = None,
    allow_insecure_http: bool = False,
) -> ExportResult:
    """Run one export into ``out`` and return its :class:`ExportResult`.

    Authenticate either with ``client_id`` + ``key`` (SMART Backend Services;
    ``scope`` defaults to ``system/<Type>.rs`` for each type, or
    ``system/*.rs``) or with ``auth``, an ``httpx.Auth`` such as the
    notebook's (a user's own token, for patient- or group-level exports).
    ``since="auto"`` continues from the previous run's ``transactionTime`` in
    ``out``; an fsspec URL as ``out`` (``s3://bucket/prefix``) exports into
    ``work_dir`` (default: under ``~/.cache``) and uploads the result. Raises :class:`BulkError` (with an ``exit_code``) when the export
    cannot finish; a result whose ``exit_code`` is 3 saved everything but
    carries server errors or bad lines (see ``summary``). Credentials go only
    over https or to a loopback host; ``allow_insecure_http=True`` allows plain
    http to any host (a test server on a private network).
    """
    from .cli import run_from_options

    spec = ExportSpec(
        level="group" if group else ("patient" if patient_level else "system"),
        group=group,
        types=_types(types),
        since=None if since == "auto" else since,
        until=until,
        type_filters=list(type_filters),
        elements=list(elements),
        patients=list(patients),
        allow_partial_manifests=allow_partial_manifests,
        include_associated_data=list(include_associated_data),
        organize_output_by=organize_output_by,
        param_style=param_style,
        method=method,
        lenient=lenient,
    )
    return run_from_options(
        spec,
        fhir_url=fhir_url,
        out=out,
        work_dir=Path(work_dir) if work_dir else None,
        client_id=client_id,
        key=str(key) if key is not None else None,
        auth=auth,
        scope=scope,
        since_auto=since == "auto",
        views=list(views),
        parallel=parallel,
        timeout=timeout,
        resume=resume,
        cancel=cancel,
        keep_server_job=keep_server_job,
        trusted_origins=frozenset(trusted_origins),
        audit_log=Path(audit_log) if audit_log else None,
        lock_dir=Path(lock_dir) if lock_dir else None,
        http=http,
        show_progress=False,
        allow_insecure_http=allow_insecure_http,
    )
