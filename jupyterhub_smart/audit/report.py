"""The accounting of disclosures for one patient (HIPAA 45 CFR 164.528), as HTML or CSV.

A patient asks who saw their record. The answer a privacy officer hands over
lists each disclosure made through the hub: *when*, *to whom* (hub user and
their EHR identity, from which network address), *through what* (the EHR
launch that opened the patient's context, and the notebook server that made
the request), *what kind of data* (FHIR resource type and interaction) and
*how much* (resources returned). Refused requests disclosed nothing and are
listed apart, with the sign-ins and token hand-outs in the patient's context.

Everything comes from :func:`.query.search`, so every line in a report was
read back from the log and checked against the chain-verified index.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from .index import AuditIndex
from .query import Filters, Match, patient_candidates, search
from .query_cli import csv_cell

__all__ = ["Disclosure", "Report", "build_report", "render_csv", "render_html"]

TEMPLATES = Path(__file__).parent / "templates"
#: Actions that put the patient's data within someone's reach (listed as context).
CONTEXT_ACTIONS = ("launch-received", "login-succeeded", "token-issued", "token-refreshed")


@dataclass
class Disclosure:
    """One request that returned the patient's data (or, ``refused``, did not)."""

    seq: int
    time: str
    user: str
    fhir_user: str
    address: str
    issuer: str
    launch: str  # "EHR launch at <time>" of the sign-in in force, or ""
    notebook: str  # the notebook server that made the request, or ""
    interaction: str
    resource_type: str
    count: int | None
    outcome: str


@dataclass
class Recipient:
    """Everything one user received about the patient."""

    user: str
    fhir_user: str
    first: str
    last: str
    requests: int = 0
    resources: int = 0
    by_type: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    patient: str
    generated: str
    since: str | None
    until: str | None
    log_id: str
    head_seq: int
    head_hash: str
    first_seq: int
    disclosures: list[Disclosure] = field(default_factory=list)
    refused: list[Disclosure] = field(default_factory=list)
    context: list[dict[str, Any]] = field(default_factory=list)
    recipients: dict[str, Recipient] = field(default_factory=dict)


def _patient_label(ref: str) -> str:
    names = patient_candidates(ref)
    return next((n for n in names if n.startswith("Patient/")), names[0])


def build_report(index: AuditIndex, filters: Filters) -> Report:
    """Collect the disclosures of ``filters.patient`` (within since/until) from the index."""
    if not filters.patient:
        raise ValueError("a report is about one patient: give the patient")
    head_seq, head_hash = index.head
    report = Report(
        patient=_patient_label(filters.patient),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        since=filters.since,
        until=filters.until,
        log_id=index.log_id,
        head_seq=head_seq,
        head_hash=head_hash,
        first_seq=index.first_seq,
    )
    matches = list(search(index, filters))
    launches = _launches(index, {m.row["user"] for m in matches if m.row["user"]})
    for match in matches:
        row = match.row
        action = row["action"]
        if action == "data-access":
            item = _disclosure(match, launches)
            if match.record.get("outcome") == "0":
                report.disclosures.append(item)
                _count(report, item)
            else:
                report.refused.append(item)
        elif action in CONTEXT_ACTIONS or action == "bulk-export":
            report.context.append(
                {
                    "seq": match.seq,
                    "time": row["time"],
                    "action": action,
                    "user": row["user"] or "",
                    "fhir_user": row["fhir_user"] or "",
                    "address": row["address"] or "",
                    "issuer": row["issuer"] or "",
                    "outcome": "success" if match.record.get("outcome") == "0" else "failure",
                }
            )
    return report


def _launches(index: AuditIndex, users: set[str]) -> dict[str, list[tuple[int, str, str]]]:
    """Per user, their sign-ins (seq, time, patient) in order: which launch a request ran under."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    for user in sorted(users):
        for match in search(index, Filters(user=user, types=["login-succeeded"])):
            found.setdefault(user, []).append(
                (match.seq, match.row["time"] or "", match.row["patient"] or "")
            )
    return found


def _disclosure(match: Match, launches: dict[str, list[tuple[int, str, str]]]) -> Disclosure:
    row = match.row
    user = row["user"] or ""
    launch = ""
    for seq, time, patient in reversed(launches.get(user, [])):
        if seq < match.seq:
            where = f" for {patient}" if patient else " (no patient context)"
            launch = f"EHR sign-in at {time[:19].replace('T', ' ')} UTC{where}"
            break
    return Disclosure(
        seq=match.seq,
        time=row["time"] or "",
        user=user,
        fhir_user=row["fhir_user"] or "",
        address=row["address"] or "",
        issuer=row["issuer"] or "",
        launch=launch,
        notebook=row["server"] or "",
        interaction=row["interaction"] or "",
        resource_type=row["resource_type"] or "",
        count=row["count"],
        outcome="success" if match.record.get("outcome") == "0" else "failure",
    )


def _count(report: Report, item: Disclosure) -> None:
    key = item.user or item.fhir_user
    recipient = report.recipients.get(key)
    if recipient is None:
        recipient = report.recipients[key] = Recipient(
            item.user, item.fhir_user, item.time, item.time
        )
    recipient.last = item.time
    recipient.requests += 1
    recipient.resources += item.count or 0
    recipient.by_type[item.resource_type or "(none)"] += item.count or 0


def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )


def render_html(report: Report) -> str:
    """A self-contained HTML page (no script, no external resource), every value escaped."""
    return _env().get_template("disclosures.html").render(report=report)


#: Columns of the CSV report, one row per disclosure.
REPORT_COLUMNS = (
    "seq",
    "time",
    "user",
    "fhir_user",
    "address",
    "issuer",
    "launch",
    "notebook",
    "interaction",
    "resource_type",
    "count",
    "outcome",
)


def render_csv(report: Report) -> str:
    """One row per disclosure (refused requests included, outcome says so), spreadsheet-safe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for item in sorted([*report.disclosures, *report.refused], key=lambda d: d.seq):
        writer.writerow([csv_cell(getattr(item, column)) for column in REPORT_COLUMNS])
    return out.getvalue()
