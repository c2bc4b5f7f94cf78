"""``jupyterhub-smart bulk export``: the command line face of :mod:`jupyterhub_smart.bulk`.

Only argparse is imported at registration; the export machinery loads when
the command runs. Exit status: 0 done, 1 failed, 2 bad usage, 3 saved but
with server errors or bad data (see the summary), 4 the ``--timeout`` budget
ran out (the server job is kept: ``--resume``), 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..cli import positive_int

EPILOG = """\
Output under --out DIR: ndjson/<Type>/ (files as downloaded), parquet/<Type>/part-*.parquet
(built-in view columns + resource_id + raw JSON 'resource'), views/<name>/ (--view),
deleted/, errors/ and export.json (state and summary). Read it with DuckDB:
  SELECT * FROM read_parquet('DIR/parquet/Observation/*.parquet')

Exit status: 0 done; 1 failed; 2 usage; 3 saved, but the server reported errors or some
lines were bad (see the summary); 4 --timeout ran out (continue with --resume);
130 interrupted (continue with --resume).
"""


def register(subparsers: Any) -> None:
    """Add ``bulk export``."""
    bulk = subparsers.add_parser("bulk", help="FHIR Bulk Data export into Parquet")
    commands = bulk.add_subparsers(dest="bulk_command", metavar="COMMAND", required=True)
    p = commands.add_parser(
        "export",
        help="run (or --resume, or --cancel) a Bulk Data $export into a directory",
        description="Export FHIR data with Bulk Data $export (SMART Backend Services) into NDJSON "
        "and Parquet, resumably.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--fhir-url", required=True, metavar="URL", help="FHIR base URL of the server")
    p.add_argument("--client-id", required=True, metavar="ID", help="Backend Services client id")
    p.add_argument(
        "--key", required=True, metavar="FILE", help="private key (PEM or JWK JSON; RS384 or ES384)"
    )
    p.add_argument(
        "--key-id", metavar="KID", help="kid of the key (default: the file's, else its thumbprint)"
    )
    p.add_argument(
        "--scope", help="scopes to request (default: system/<Type>.rs per --type, else system/*.rs)"
    )
    level = p.add_mutually_exclusive_group()
    level.add_argument("--system", action="store_true", help="system-level export (the default)")
    level.add_argument(
        "--patient", action="store_true", help="Patient-level export (Patient/$export)"
    )
    level.add_argument("--group", metavar="ID", help="Group-level export (Group/ID/$export)")
    p.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="T1,T2,...",
        help="resource types (comma-separated; may be repeated)",
    )
    p.add_argument(
        "--since",
        metavar="ISO|auto",
        help="_since instant, or 'auto': the last run's transactionTime",
    )
    p.add_argument("--until", metavar="ISO", help="_until instant (Bulk Data 3.0)")
    p.add_argument(
        "--type-filter",
        action="append",
        default=[],
        metavar="QUERY",
        help="_typeFilter query, e.g. Observation?category=laboratory (repeatable)",
    )
    p.add_argument(
        "--elements",
        action="append",
        default=[],
        metavar="E1,E2",
        help="_elements (comma-separated; repeatable)",
    )
    p.add_argument(
        "--patient-id",
        action="append",
        default=[],
        metavar="ID",
        help="limit to these patients (POST 'patient'; repeatable)",
    )
    p.add_argument(
        "--view",
        action="append",
        default=[],
        metavar="NAME|FILE",
        help="also write views/<name>/ with this ViewDefinition (a built-in name or a JSON file; repeatable)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR|URL",
        help="output directory, or an fsspec URL such as s3://bucket/prefix (exported into "
        "--work-dir, then uploaded)",
    )
    p.add_argument(
        "--work-dir",
        metavar="DIR",
        help="local staging directory of a URL --out (default: under ~/.cache/jupyterhub-smart)",
    )
    p.add_argument("--resume", action="store_true", help="continue the unfinished export in --out")
    p.add_argument(
        "--cancel", action="store_true", help="DELETE the unfinished export of --out at the server"
    )
    p.add_argument(
        "--keep-server-job",
        action="store_true",
        help="do not DELETE the server job after completion",
    )
    p.add_argument(
        "--parallel",
        type=positive_int,
        default=4,
        metavar="N",
        help="parallel downloads (default 4)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="time budget; when it runs out the job is kept (exit 4)",
    )
    p.add_argument(
        "--post", action="store_true", help="kick off with POST and a Parameters body (default GET)"
    )
    p.add_argument(
        "--param-style",
        choices=("comma", "repeat"),
        default="comma",
        help="send list parameters comma-joined (default) or repeated",
    )
    p.add_argument("--lenient", action="store_true", help="send Prefer: handling=lenient")
    p.add_argument(
        "--allow-partial-manifests",
        action="store_true",
        help="allow a paged manifest (Bulk Data 3.0)",
    )
    p.add_argument(
        "--trust-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept file URLs on this origin (scheme://host:port)",
    )
    p.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="send credentials over plain http to hosts other than loopback (a test server on a "
        "private network; never in production)",
    )
    p.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append export start/completion/cancel/failure events to this audit log",
    )
    p.add_argument(
        "--lock-dir",
        metavar="DIR",
        help="where the per-server lock files live (default ~/.cache/jupyterhub-smart/bulk-locks)",
    )
    p.add_argument(
        "--include-associated-data",
        action="append",
        default=[],
        metavar="VALUE",
        help="includeAssociatedData value, e.g. LatestProvenanceResources (repeatable)",
    )
    p.add_argument(
        "--organize-output-by",
        metavar="TYPE",
        help="organizeOutputBy (Bulk Data 3.0), e.g. Patient; sent as given",
    )
    p.add_argument(
        "--chunk-lines",
        type=positive_int,
        default=5_000,
        metavar="N",
        help="lines per Parquet part and per committed step of a download (default 5000)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _load_view(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    import orjson

    from ..views import builtin
    from .errors import BulkError

    if isinstance(spec, Mapping):
        definition = dict(spec)
    elif Path(spec).is_file():
        try:
            definition = orjson.loads(Path(spec).read_bytes())
        except orjson.JSONDecodeError:
            raise BulkError(f"--view {spec}: not JSON") from None
    elif spec in builtin.names():
        definition = builtin.load(spec)
    else:
        raise BulkError(
            f"--view {spec!r}: no such file, and not a built-in view ({', '.join(builtin.names())})"
        )
    name = definition.get("name") if isinstance(definition, dict) else None
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        name = (Path(spec).stem if isinstance(spec, str) else "view").lower()
    return name, definition


def run_from_options(
    spec: Any,
    *,
    fhir_url: str,
    out: str | Path,
    client_id: str | None,
    key: str | None,
    auth: Any,
    scope: str | None,
    since_auto: bool,
    views: list[Any],
    parallel: int,
    timeout: float | None,
    resume: bool,
    cancel: bool,
    keep_server_job: bool,
    trusted_origins: frozenset[str],
    audit_log: Path | None,
    lock_dir: Path | None,
    http: Any,
    show_progress: bool,
    key_id: str | None = None,
    chunk_lines: int = 5_000,
    work_dir: Path | None = None,
    allow_insecure_http: bool = False,
) -> Any:
    """Build the HTTP client, auth, views and audit for an export and run it.

    Credentials go only over https or to a loopback host (see :mod:`.tls`),
    unless ``allow_insecure_http``.
    """
    import contextlib

    import httpx

    from .. import views as views_pkg
    from .auth import BackendServicesAuth, discover_token_endpoint
    from .errors import BulkError
    from .remote import default_staging, is_remote, sync
    from .run import RunOptions, run_export
    from .tls import TLSOnlyAuth, require_tls

    definitions = [_load_view(v) for v in views]
    for name, definition in definitions:
        try:
            views_pkg.compile_view(definition)
        except views_pkg.ViewDefinitionError as exc:
            raise BulkError(f"--view {name}: {exc}") from None
    require_tls(fhir_url, "FHIR server", allow_insecure_http)
    with contextlib.ExitStack() as stack:
        if http is None:
            http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(60.0, connect=15.0)))
        if auth is None:
            if not client_id or not key:
                raise BulkError("give client_id and key (Backend Services), or auth")
            requested = scope or (
                " ".join(f"system/{t}.rs" for t in spec.types) if spec.types else "system/*.rs"
            )
            if spec.level == "group" and scope is None and spec.types:
                requested += " system/Group.rs"
            auth = BackendServicesAuth(
                http,
                require_tls(
                    discover_token_endpoint(http, fhir_url), "token endpoint", allow_insecure_http
                ),
                client_id,
                key,
                requested,
                key_id=key_id,
            )
        auth = TLSOnlyAuth(auth, allow_insecure_http)
        audit = _audit_writer(stack, audit_log, fhir_url)
        bar = stack.enter_context(_progress_bar(show_progress))
        remote_url = str(out) if is_remote(out) else None
        local_out = (work_dir or default_staging(str(out))) if remote_url else Path(out)
        options = RunOptions(
            out=local_out,
            resume=resume,
            cancel=cancel,
            keep_server_job=keep_server_job,
            parallel=parallel,
            timeout=timeout,
            since_auto=since_auto,
            trusted_origins=trusted_origins,
            view_definitions=definitions,
            lock_dir=lock_dir,
            chunk_lines=chunk_lines,
            on_progress=bar.status,
            on_bytes=bar.update,
            audit=audit,
        )
        result = run_export(
            http, auth, fhir_url.rstrip("/"), client_id or "user-token", spec, options
        )
        if remote_url is not None and result.summary.get("status") == "complete":
            bar.status(f"uploading to {remote_url}")
            result.summary["remote"] = remote_url
            result.summary["uploaded_files"] = sync(local_out, remote_url)
        return result


def _audit_writer(stack: Any, path: Path | None, fhir_url: str) -> Any:
    """A callback recording export events in an audit log (no token ever reaches it)."""
    if path is None:
        return lambda action, outcome, details: None
    from ..audit.events import hub_event
    from ..audit.log import AuditLog

    log = stack.enter_context(AuditLog(path))

    def record(action: str, outcome: str, details: dict[str, Any]) -> None:
        words = [
            f"{action.removeprefix('bulk-export-')}:",
            f"level={details['level']}",
            f"types={','.join(details['types']) or 'all'}",
        ]
        if details.get("group"):
            words.append(f"group={details['group']}")
        words.append(f"files={details['files']}")
        if details.get("reason"):
            words.append(f"reason={details['reason']}")
        log.record_sync(
            hub_event("bulk-export", outcome=outcome, description=" ".join(words), issuer=fhir_url)
        )

    return record


class _Bar:
    """tqdm progress (bytes, with files and resources as postfix), or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                unit="B", unit_scale=True, desc="export", file=sys.stderr, dynamic_ncols=True
            )
        self._last = 0

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text[:60])

    def update(self, progress: Any) -> None:
        if self.bar is None:
            return
        delta = progress.bytes - self._last
        self._last = progress.bytes
        self.bar.update(delta)
        self.bar.set_postfix(files=progress.files, resources=progress.resources, refresh=False)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(enabled: bool) -> _Bar:
    return _Bar(enabled)


def _run(args: argparse.Namespace) -> int:
    import orjson

    from . import ExportSpec, _types
    from .errors import EXIT_USAGE, BulkError

    types = _types(args.type)
    if args.since == "auto" and args.resume:
        print(
            "jupyterhub-smart bulk export: --since auto starts a new run; it cannot be combined with --resume",
            file=sys.stderr,
        )
        return EXIT_USAGE
    spec = ExportSpec(
        level="group" if args.group else ("patient" if args.patient else "system"),
        group=args.group,
        types=types,
        since=None if args.since == "auto" else args.since,
        until=args.until,
        type_filters=args.type_filter,
        elements=_types(args.elements),
        patients=args.patient_id,
        allow_partial_manifests=args.allow_partial_manifests,
        include_associated_data=args.include_associated_data,
        organize_output_by=args.organize_output_by,
        param_style=args.param_style,
        method="POST" if args.post else "GET",
        lenient=args.lenient,
    )
    try:
        result = run_from_options(
            spec,
            fhir_url=args.fhir_url,
            out=args.out,
            work_dir=Path(args.work_dir) if args.work_dir else None,
            client_id=args.client_id,
            key=args.key,
            key_id=args.key_id,
            chunk_lines=args.chunk_lines,
            auth=None,
            scope=args.scope,
            since_auto=args.since == "auto",
            views=args.view,
            parallel=args.parallel,
            timeout=args.timeout,
            resume=args.resume,
            cancel=args.cancel,
            keep_server_job=args.keep_server_job,
            trusted_origins=frozenset(args.trust_origin),
            audit_log=Path(args.audit_log) if args.audit_log else None,
            lock_dir=Path(args.lock_dir) if args.lock_dir else None,
            http=None,
            allow_insecure_http=args.allow_insecure_http,
            show_progress=not args.no_progress and not args.json and sys.stderr.isatty(),
        )
    except KeyboardInterrupt:
        print("jupyterhub-smart bulk export: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except BulkError as exc:
        if args.json:
            print(
                orjson.dumps(
                    {"status": "failed", "exit_code": exc.exit_code, "error": str(exc)}
                ).decode()
            )
        print(f"jupyterhub-smart bulk export: {exc}", file=sys.stderr)
        return exc.exit_code
    summary = result.summary
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        counts = ", ".join(f"{n} {t}" for t, n in sorted(summary.get("resources", {}).items()))
        print(f"{summary.get('status')}: {counts or 'nothing'} in {args.out}", file=sys.stderr)
        for key in ("server_errors", "invalid_lines", "problems"):
            if summary.get(key):
                print(f"  {key}: {summary[key]}", file=sys.stderr)
    return int(summary.get("exit_code", 0))
