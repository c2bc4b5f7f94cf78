"""``jupyterhub-smart sandbox``: serve the sandbox EHR.

Only argparse is imported here; the server and its dependencies (the
``[sandbox]`` extra: Flask, Waitress, Authlib) load when the command runs, so
``jupyterhub-smart --help`` stays fast and works without them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli import missing_extra, non_negative_float, non_negative_int, positive_int, tcp_port

#: What the sandbox's servers import, all from the ``[sandbox]`` extra.
SERVER_MODULES = ("flask", "waitress", "authlib")

EPILOG = """\
URLs under http://HOST:PORT: /fhir (FHIR R4; iss and aud), /auth (authorize,
token, introspect, revoke, jwks), /ehr (EHR simulator with Launch buttons).

Access rules of the FHIR server (stricter than most real EHRs, on purpose):
  - every request but /fhir/metadata and /fhir/.well-known/smart-configuration
    needs 'Authorization: Bearer TOKEN'; a missing, expired or revoked token
    answers 401 with WWW-Authenticate: Bearer;
  - a token without a scope for the interaction answers 403 with an
    OperationOutcome naming the scope it needs;
  - patient/ scopes see only the launched patient's compartment; user/ and
    system/ scopes see every patient. A read of a resource the token may not
    see (another patient's, or outside a v2 scope's ?category=) answers 404,
    exactly like an id that does not exist, so that a token cannot probe
    which other records exist.
"""


def register(subparsers: Any) -> None:
    """Add the ``sandbox`` sub-command."""
    parser = subparsers.add_parser(
        "sandbox",
        help="serve the sandbox EHR (SMART authorization server, FHIR R4 server, EHR launcher)",
        description="Serve a strict SMART on FHIR sandbox EHR on this machine. Prints "
        "'SMART sandbox ready: iss=URL' once it accepts requests.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=tcp_port, default=8700, help="TCP port (default 8700)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".sandbox-data"),
        help="where the FHIR database, tokens and signing key live (default .sandbox-data)",
    )
    parser.add_argument(
        "--patients",
        type=positive_int,
        default=20,
        help="synthetic patients to generate (default 20)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the synthetic data (default 42)"
    )
    parser.add_argument(
        "--clients",
        type=Path,
        default=None,
        help="JSON list of client registrations; default: one public client 'demo-public' "
        "for http://127.0.0.1:8000/hub/oauth_callback",
    )
    parser.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve every authorization at once as the first Practitioner (no pages)",
    )
    parser.add_argument(
        "--access-token-lifetime",
        type=positive_int,
        default=3600,
        metavar="SECONDS",
        help="lifetime of access tokens (default 3600)",
    )
    parser.add_argument(
        "--refresh-token-lifetime",
        type=positive_int,
        default=30 * 24 * 3600,
        metavar="SECONDS",
        help="lifetime of refresh tokens (default 30 days)",
    )
    parser.add_argument(
        "--code-lifetime",
        type=positive_int,
        default=60,
        metavar="SECONDS",
        help="how long an authorization code stays redeemable (default 60)",
    )
    parser.add_argument(
        "--token-answer-delay",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="testing only: answer a successful code exchange or refresh this many seconds "
        "after spending the code or refresh token, like an EHR that answers after its client "
        "gave up (default 0)",
    )
    parser.add_argument(
        "--launch-lifetime",
        type=positive_int,
        default=600,
        metavar="SECONDS",
        help="how long an EHR 'launch' value stays usable (default 600)",
    )
    parser.add_argument(
        "--app-launch-url",
        default="http://127.0.0.1:8000/hub/oauth_login",
        metavar="URL",
        help="default app launch URL of the EHR simulator's Launch buttons",
    )
    parser.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="public origin if the sandbox sits behind a proxy (default http://HOST:PORT)",
    )
    parser.add_argument(
        "--dense-patient-observations",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="add a patient with id 'dense' that has N Observations (paging benchmarks; default 0)",
    )
    bulk = parser.add_argument_group("Bulk Data $export")
    bulk.add_argument(
        "--bulk-link-lifetime",
        type=positive_int,
        default=3600,
        metavar="SECONDS",
        help="how long $export file links stay valid; a new status GET issues fresh ones "
        "(default 3600)",
    )
    bulk.add_argument(
        "--bulk-job-seconds",
        type=non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="an export reports 'in progress' for at least this long (default 1)",
    )
    bulk.add_argument(
        "--bulk-retry-after",
        type=positive_int,
        default=1,
        metavar="SECONDS",
        help="Retry-After of in-progress status answers and 429s (default 1)",
    )
    bulk.add_argument(
        "--bulk-file-resources",
        type=positive_int,
        default=10_000,
        metavar="N",
        help="resources per $export output file; more go to further files (default 10000)",
    )
    bulk.add_argument(
        "--bulk-manifest-page",
        type=positive_int,
        default=5,
        metavar="N",
        help="output files per manifest page when the client sends allowPartialManifests=true "
        "(default 5)",
    )
    bulk.add_argument(
        "--bulk-deleted-observations",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="treat the last N Observations as deleted on 2025-07-02: exports leave them out (unless _until is earlier) and "
        "list them in deleted[] when _since is earlier (default 0)",
    )
    bulk.add_argument(
        "--bulk-faults",
        default="",
        metavar="LIST",
        help="inject faults into the $export API: comma-separated NAME, NAME:N or NAME:* among "
        "kickoff-429, status-500, status-transient, status-429, retry-after-date, forever, "
        "file-503, truncate, expire, slow, no-range, reject-repeated, outcome-manifest "
        "(see docs/sandbox.md)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the sandbox with the parsed options; returns the exit status."""
    missing = missing_extra("sandbox", SERVER_MODULES)
    if missing:
        print(f"jupyterhub-smart sandbox: {missing}", file=sys.stderr)
        return 2
    from .auth.options import AuthOptions
    from .fhir.bulk_options import BulkOptions, Faults
    from .server import serve

    try:
        faults = Faults.parse(args.bulk_faults)
    except ValueError as exc:
        print(f"jupyterhub-smart sandbox: --bulk-faults: {exc}", file=sys.stderr)
        return 2
    from .settings import SandboxSettings

    settings = SandboxSettings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        patients=args.patients,
        seed=args.seed,
        clients_file=args.clients,
        auto_approve=args.auto_approve,
        access_token_lifetime=args.access_token_lifetime,
        refresh_token_lifetime=args.refresh_token_lifetime,
        default_app_launch_url=args.app_launch_url,
        public_url=args.public_url,
    )
    return serve(
        settings,
        dense_patient_observations=args.dense_patient_observations,
        auth_options=AuthOptions(
            launch_lifetime=args.launch_lifetime,
            code_lifetime=args.code_lifetime,
            token_answer_delay=args.token_answer_delay,
        ),
        bulk_options=BulkOptions(
            link_lifetime=args.bulk_link_lifetime,
            job_seconds=args.bulk_job_seconds,
            retry_after=args.bulk_retry_after,
            file_resources=args.bulk_file_resources,
            manifest_page=args.bulk_manifest_page,
            deleted_observations=args.bulk_deleted_observations,
            faults=faults,
        ),
    )
