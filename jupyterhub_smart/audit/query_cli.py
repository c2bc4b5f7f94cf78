"""``jupyterhub-smart audit query`` and ``audit report``: answers from the indexed log.

``audit query PATH [--patient REF] [--user NAME] [--issuer URL] [--type ACTION]
[--since T] [--until T] [--format table|json|csv]`` lists matching records;
``audit report PATH --patient REF [--format html|csv] [--out FILE]`` writes the
accounting of disclosures for one patient (:mod:`.report`).

PATH is the live log; its rotated files beside it (``.gz`` too) are included.
The index (``--index``, default ``<log>.index.sqlite`` beside the log, or the
user's cache when that directory is read-only) is brought up to date first.

Exit status: 0 answered (also with no match), 1 the log does not match its
index or its chain (the message says which ``seq`` and what to run), 2 a usage
problem (a missing file, a bad date).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .index import AuditIndex, IndexMismatch
from .query import ROW_FIELDS, Filters, Match, parse_time, search

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2

#: Columns of the CSV output: the record's seq, its filter columns, its description.
CSV_COLUMNS = ("seq", *ROW_FIELDS, "description")
_OUTCOME = {"0": "success", "4": "failure", "8": "failure (server)", "12": "failure (major)"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def register(sub: Any) -> None:
    """Add ``query`` and ``report`` to the ``audit`` command's sub-commands."""
    query = sub.add_parser(
        "query",
        help="find audit records by patient, user, issuer, kind or time (indexed)",
        description=(
            "List the records of an audit log that match every filter given. PATH is the "
            "live log; its rotated files beside it (gzip-compressed ones too) are included. "
            "An index beside the log is brought up to date first and checked against the "
            "chain; each record shown is read back from the log and checked again."
        ),
    )
    query.add_argument("path", metavar="PATH", help="the live audit log file")
    _filter_arguments(query)
    query.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table (default), json (a JSON array of the records as logged) or csv",
    )
    query.add_argument("--limit", type=int, help="show at most this many records")
    query.add_argument("--out", type=Path, help="write to this file (default: standard output)")
    query.add_argument("--index", type=Path, help="index file (default: beside the log)")
    query.set_defaults(func=_query)

    report = sub.add_parser(
        "report",
        help="accounting of disclosures for one patient (HIPAA 164.528), HTML or CSV",
        description=(
            "Who accessed one patient's data through the hub, when, from which EHR launch or "
            "notebook, what kind of data and how much: the accounting of disclosures a privacy "
            "officer hands to a patient."
        ),
    )
    report.add_argument("path", metavar="PATH", help="the live audit log file")
    report.add_argument("--patient", required=True, help="Patient id, Patient/id or full URL")
    report.add_argument("--since", help="from this date or date-time (ISO 8601, UTC)")
    report.add_argument("--until", help="up to this date (whole day) or date-time, exclusive")
    report.add_argument("--format", choices=["html", "csv"], default="html", help="html or csv")
    report.add_argument("--out", type=Path, help="write to this file (default: standard output)")
    report.add_argument("--index", type=Path, help="index file (default: beside the log)")
    report.set_defaults(func=_report)


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient", help="Patient id, Patient/id or full URL")
    parser.add_argument("--user", help="hub username or fhirUser reference (Practitioner/...)")
    parser.add_argument("--issuer", help="EHR FHIR base URL (the iss)")
    parser.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="ACTION",
        help="event kind, e.g. data-access, login-succeeded; 'alert-*' for a prefix; repeatable",
    )
    parser.add_argument("--since", help="from this date or date-time (ISO 8601, UTC if no zone)")
    parser.add_argument("--until", help="up to this date (whole day) or date-time, exclusive")


def filters_from(args: argparse.Namespace) -> Filters:
    """The filters of parsed arguments; ValueError for a bad date."""
    types = [t.strip() for value in getattr(args, "type", []) or [] for t in value.split(",")]
    return Filters(
        patient=args.patient or None,
        user=getattr(args, "user", None) or None,
        issuer=getattr(args, "issuer", None) or None,
        types=[t for t in types if t],
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until, end=True) if args.until else None,
    )


def open_index(path: str | Path, index: Path | None) -> AuditIndex:
    """The log's index, brought up to date (IndexMismatch, FileNotFoundError)."""
    opened = AuditIndex(path, index)
    try:
        opened.update()
    except BaseException:
        opened.close()
        raise
    return opened


def description(record: dict[str, Any]) -> str:
    return str(record.get("outcomeDesc") or "")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text, never runs as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def csv_rows(matches: Iterable[Match]) -> Iterator[list[Any]]:
    for match in matches:
        row = {**match.row, "seq": match.seq, "description": description(match.record)}
        row["outcome"] = _OUTCOME.get(str(row["outcome"]), row["outcome"])
        yield [csv_cell(row.get(column)) for column in CSV_COLUMNS]


def write_csv(matches: Iterable[Match], out: IO[str]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for row in csv_rows(matches):
        writer.writerow(row)
        n += 1
    return n


def _plain(value: Any, width: int) -> str:
    """Terminal-safe text: control characters (escape sequences) shown as '?', clipped."""
    text = _CONTROL.sub("?", "" if value is None else str(value))
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def write_table(matches: Iterable[Match], out: IO[str]) -> int:
    widths = (8, 19, 24, 8, 28, 22, 40)
    header = ("SEQ", "TIME (UTC)", "ACTION", "OUTCOME", "USER", "PATIENT", "WHAT")
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    n = 0
    for match in matches:
        row = match.row
        what = " ".join(str(x) for x in (row["interaction"], row["resource_type"]) if x is not None)
        if row["count"] is not None:
            what += f" ({row['count']})"
        what = what or description(match.record)
        cells = (
            match.seq,
            (row["time"] or "")[:19].replace("T", " "),
            row["action"],
            _OUTCOME.get(str(row["outcome"]), row["outcome"]),
            row["user"] or row["fhir_user"],
            row["patient"],
            what,
        )
        line = "  ".join(_plain(c, w).ljust(w) for c, w in zip(cells, widths, strict=True))
        out.write(line.rstrip() + "\n")
        n += 1
    return n


def write_json(matches: Iterable[Match], out: IO[bytes]) -> int:
    """A JSON array of the records exactly as logged, streamed."""
    n = 0
    out.write(b"[")
    for match in matches:
        out.write(b"\n" if n == 0 else b",\n")
        out.write(match.line)
        n += 1
    out.write(b"\n]\n" if n else b"]\n")
    return n


def _query(args: argparse.Namespace) -> int:
    try:
        filters = filters_from(args)
        if args.limit is not None and args.limit < 0:
            raise ValueError("--limit must be 0 or more")
    except ValueError as exc:
        print(f"audit query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open_index(args.path, args.index) as index:
            matches = search(index, filters, limit=args.limit)
            n = _emit(args, matches)
    except FileNotFoundError as exc:
        print(f"audit query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except IndexMismatch as exc:
        print(f"audit query: FAILED: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    print(f"audit query: {n} record(s)", file=sys.stderr)
    return EXIT_OK


def _emit(args: argparse.Namespace, matches: Iterable[Match]) -> int:
    # Everything is checked before a byte is written: a mismatch found half-way must not
    # leave a partial answer looking like a whole one.
    if args.format == "json":
        buffer = io.BytesIO()
        n = write_json(matches, buffer)
        data = buffer.getvalue()
        if args.out:
            args.out.write_bytes(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return n
    text = io.StringIO()
    n = write_csv(matches, text) if args.format == "csv" else write_table(matches, text)
    if args.out:
        args.out.write_text(text.getvalue(), encoding="utf-8", newline="")
    else:
        sys.stdout.write(text.getvalue())
        sys.stdout.flush()
    return n


def _report(args: argparse.Namespace) -> int:
    from .report import build_report, render_csv, render_html

    try:
        filters = Filters(
            patient=args.patient,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until, end=True) if args.until else None,
        )
    except ValueError as exc:
        print(f"audit report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open_index(args.path, args.index) as index:
            report = build_report(index, filters)
    except FileNotFoundError as exc:
        print(f"audit report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except IndexMismatch as exc:
        print(f"audit report: FAILED: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    text = render_html(report) if args.format == "html" else render_csv(report)
    if args.out:
        args.out.write_text(text, encoding="utf-8", newline="")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    print(
        f"audit report: {len(report.disclosures)} disclosure(s) of {report.patient} "
        f"to {len(report.recipients)} user(s)",
        file=sys.stderr,
    )
    return EXIT_OK


__all__ = ["CSV_COLUMNS", "csv_cell", "filters_from", "open_index", "register", "write_csv"]
