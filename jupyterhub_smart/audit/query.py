"""Find audit records by patient, user, issuer, kind and time, through the index.

The index (:mod:`.index`) narrows the search; the answer itself comes from the
log: every matching line is read back, checked against the hash the index
recorded for it, parsed, and checked against the filters again. A row the
index claims matches but whose line does not (an index edited by hand) raises
:class:`~.index.IndexMismatch` instead of being shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson

from .index import AuditIndex, IndexMismatch, columns_of, patients_of

__all__ = [
    "Filters",
    "Match",
    "count",
    "parse_time",
    "patient_candidates",
    "search",
]

#: Columns of :func:`~.index.row_of`, in order.
ROW_FIELDS = (
    "time",
    "action",
    "outcome",
    "user",
    "fhir_user",
    "address",
    "patient",
    "issuer",
    "server",
    "resource_type",
    "interaction",
    "count",
)
_PATIENT_URL = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})/?$")


def parse_time(text: str, *, end: bool = False) -> str:
    """An ISO 8601 date or date-time as the log's UTC ``time`` string (ValueError if not).

    A date alone means the start of that day, or with ``end`` the start of the
    next one (so ``--until 2026-03-01`` includes the whole of March 1st). A
    time without a zone is taken as UTC.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            if end:
                moment += timedelta(days=1)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 date or date-time: {text!r} (e.g. 2026-03-01 or 2026-03-01T09:30:00Z)"
        ) from None
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def patient_candidates(ref: str) -> list[str]:
    """The ways the log may name a patient given as ``123``, ``Patient/123`` or a full URL."""
    ref = ref.strip()
    if not ref:
        raise ValueError("the patient reference is empty")
    found = [ref]
    match = _PATIENT_URL.search(ref)
    if match:
        found.append(f"Patient/{match.group(1)}")
    elif "/" not in ref:
        found.append(f"Patient/{ref}")
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Filters:
    """What to look for; every field given must match (``types``: any of them)."""

    patient: str | None = None
    user: str | None = None
    issuer: str | None = None
    types: Sequence[str] = ()
    since: str | None = None  # the log's time format, see parse_time
    until: str | None = None  # exclusive

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition over the index's ``events`` table and its parameters."""
        parts: list[str] = []
        args: list[Any] = []
        if self.patient:
            names = patient_candidates(self.patient)
            marks = ", ".join("?" * len(names))
            # A record naming several patients is in event_patients under each of them.
            inner = f"SELECT seq FROM event_patients WHERE patient IN ({marks})"  # noqa: S608
            parts.append(f"(patient IN ({marks}) OR seq IN ({inner}))")
            args += [*names, *names]
        if self.user:
            parts.append("(user = ? OR fhir_user = ?)")
            args += [self.user, self.user]
        if self.issuer:
            base = self.issuer.rstrip("/")
            parts.append("issuer IN (?, ?)")
            args += [base, base + "/"]
        if self.types:
            ors = []
            for kind in self.types:
                if kind.endswith("*"):
                    ors.append("action LIKE ? ESCAPE '\\'")
                    prefix = kind[:-1].replace("\\", "\\\\").replace("%", "\\%")
                    args.append(prefix.replace("_", "\\_") + "%")
                else:
                    ors.append("action = ?")
                    args.append(kind)
            parts.append("(" + " OR ".join(ors) + ")")
        if self.since:
            parts.append("time >= ?")
            args.append(self.since)
        if self.until:
            parts.append("time < ?")
            args.append(self.until)
        return (" AND ".join(parts) or "1"), args

    def accepts(self, row: dict[str, Any], patients: Sequence[str] = ()) -> bool:
        """The same test in Python, on the columns (and ``patients``) of a line read back."""
        if self.patient:
            names = patient_candidates(self.patient)
            if row["patient"] not in names and not set(patients) & set(names):
                return False
        if self.user and self.user not in (row["user"], row["fhir_user"]):
            return False
        if self.issuer and (row["issuer"] or "").rstrip("/") != self.issuer.rstrip("/"):
            return False
        if self.types:
            action = row["action"] or ""
            if not any(
                action.startswith(k[:-1]) if k.endswith("*") else action == k for k in self.types
            ):
                return False
        time = row["time"] or ""
        if self.since and time < self.since:
            return False
        return not (self.until and time >= self.until)


@dataclass
class Match:
    """One record found: the record as logged and its filter columns."""

    seq: int
    record: dict[str, Any]
    line: bytes
    row: dict[str, Any] = field(default_factory=dict)


def count(index: AuditIndex, filters: Filters) -> int:
    """How many records match (from the index alone)."""
    where, args = filters.where()
    (total,) = index.db.execute(f"SELECT COUNT(*) FROM events WHERE {where}", args).fetchone()  # noqa: S608
    return int(total)


def search(
    index: AuditIndex,
    filters: Filters,
    *,
    limit: int | None = None,
    offset: int = 0,
    newest_first: bool = False,
) -> Iterator[Match]:
    """Matching records in ``seq`` order (or newest first), each read back and re-checked."""
    where, args = filters.where()
    order = "DESC" if newest_first else "ASC"
    sql = f"SELECT seq FROM events WHERE {where} ORDER BY seq {order}"  # noqa: S608
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        args = [*args, int(limit), int(offset)]
    cursor = index.db.execute(sql, args)
    while True:
        seqs = [r[0] for r in cursor.fetchmany(2000)]
        if not seqs:
            return
        found = dict(index.lines(seqs))
        for seq in seqs:
            line = found.get(seq)
            if line is None:
                raise IndexMismatch(f"seq {seq} is in the index but its line was not found")
            record = orjson.loads(line)
            row = dict(zip(ROW_FIELDS, columns_of(line, record), strict=True))
            patients = patients_of(record) if filters.patient else ()  # only a patient asks
            if record.get("seq") != seq or not filters.accepts(row, patients):
                raise IndexMismatch(
                    f"the index lists seq {seq} for this search but the logged line does not "
                    "match it: the index was edited; delete it to rebuild it from the log"
                )
            yield Match(seq, record, line, row)
