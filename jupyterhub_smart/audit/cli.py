"""``jupyterhub-smart audit verify`` and ``audit export``.

Exit status: 0 when the log verifies (and, for export, was written), 1 when
the chain is broken (the message names the first bad ``seq`` and why), 2 for
a usage problem such as a missing file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``audit`` command and its sub-commands."""
    audit = subparsers.add_parser(
        "audit",
        help="verify or export the hub's audit trail",
        description="Verify or export a jupyterhub-smart audit log (JSON Lines, hash-chained).",
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")

    verify = sub.add_parser(
        "verify",
        help="check that a log is intact (exit 0) or name the first bad seq (exit 1)",
        description=(
            "Check every line and every link of the chain. PATH may be the active log "
            "file (its rotated files beside it are included), rotated files, or a directory."
        ),
    )
    verify.add_argument("paths", nargs="+", metavar="PATH")
    verify.add_argument(
        "--checkpoints",
        action="append",
        metavar="FILE|URL",
        help="signed checkpoints (the hub's checkpoint file, or a SIEM/FHIR copy of the trail): "
        "each must match the log, which catches a rewrite of the whole chain; repeatable",
    )
    verify.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="the hub's public JWK Set that signed the checkpoints (e.g. "
        "https://HUB/hub/smart/jwks.json); required with --checkpoints",
    )
    verify.set_defaults(func=_verify)

    export = sub.add_parser(
        "export",
        help="write the log as a FHIR Bundle of AuditEvent resources",
        description="Verify the log, then write it as a FHIR R4 Bundle (type collection).",
    )
    export.add_argument("--format", choices=["fhir"], default="fhir", help="output format")
    export.add_argument("--out", type=Path, help="output file (default: standard output)")
    export.add_argument("paths", nargs="+", metavar="PATH")
    export.set_defaults(func=_export)

    from .query_cli import register as register_query

    register_query(sub)

    audit.set_defaults(func=lambda _args: (audit.print_help(), EXIT_USAGE)[1])


def _verify(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .verify import ChainBroken, verify

    if args.checkpoints and not args.jwks:
        print(
            "audit verify: --checkpoints needs --jwks (the hub's public JWK Set)", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        checkpoints = _load_checkpoints(args.checkpoints, args.jwks) if args.checkpoints else None
    except CheckpointError as exc:
        print(f"audit verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    except ValueError as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = verify(args.paths, checkpoints)
    except FileNotFoundError as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ChainBroken as exc:
        print(f"audit verify: FAILED at {exc}", file=sys.stderr)
        return EXIT_BROKEN
    print(
        f"audit verify: OK: {report.records} records, seq {report.start_seq}..{report.head_seq}, "
        f"log {report.log_id}, {len(report.files)} file(s), head {report.head_hash}"
    )
    if report.start_seq > 1:
        print(
            f"note: seq 1..{report.start_seq - 1} were deleted by retention; the retained start "
            "is anchored by a signed checkpoint"
        )
    if checkpoints is not None:
        last = report.last_checkpoint
        print(
            f"checkpoints: {report.checkpoints_checked} signed checkpoint(s) match the log"
            + (f", the latest of seq {last[0]} signed {last[1]}" if last else "")
        )
    if report.deferred:
        print(
            f"note: {report.deferred} record(s) were written late (deferred) because the disk "
            "refused them at first"
        )
    for torn in report.torn_files:
        print(f"note: a torn tail was set aside after a crash: {torn}")
    if checkpoints is None:
        print(
            "note: the chain cannot show lines cut off the end, nor a rewrite of the whole chain; "
            "verify with --checkpoints and --jwks, or compare the head with a copy kept elsewhere"
        )
    else:
        print(
            "note: records written after the latest checkpoint are covered by the chain only; "
            "compare the head with a copy kept elsewhere"
        )
    return EXIT_OK


def _load_checkpoints(sources: list[str], jwks: str) -> list[Any]:
    """Every checkpoint in ``sources``, its signature checked against ``jwks``."""
    from .checkpoint import checkpoints_in, load_jwks, load_text, verify_all

    keys = load_jwks(jwks)
    tokens = [token for source in sources for token in checkpoints_in(load_text(source))]
    if not tokens:
        raise ValueError(f"no checkpoints found in {', '.join(sources)}")
    return verify_all(tokens, keys)


def _export(args: argparse.Namespace) -> int:
    from .export import write_bundle, write_bundle_file
    from .verify import ChainBroken, expand_paths, iter_verified

    try:
        files = expand_paths(args.paths)
        records = (entry.record for entry in iter_verified(files))
        if args.out is not None:
            count = write_bundle_file(records, args.out)
        else:
            # Verify everything first (constant memory), then stream: nothing is
            # printed for a log that does not verify.
            for _ in iter_verified(files):
                pass
            count = write_bundle(records, sys.stdout.buffer)
            sys.stdout.flush()
    except FileNotFoundError as exc:
        print(f"audit export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ChainBroken as exc:
        print(
            f"audit export: not exported, the log does not verify: FAILED at {exc}", file=sys.stderr
        )
        return EXIT_BROKEN
    print(f"audit export: {count} AuditEvent resource(s) written", file=sys.stderr)
    return EXIT_OK
