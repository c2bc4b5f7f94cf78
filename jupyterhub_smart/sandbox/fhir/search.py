"""FHIR search: parameters parsed strictly and turned into SQL over the store.

The sandbox is stricter than real EHRs on purpose: an unknown parameter, an
unsupported modifier, a malformed date or an empty value is a 400 naming the
problem, never silently ignored (a client that misspells ``patient`` would
otherwise download every patient's data and not notice).

Values are always bound as SQL parameters; only fixed fragments of this module
become SQL text.

Date semantics follow FHIR R4 §3.1.1.4.2: a search value is a range by its
precision (``2021`` is the whole year), a resource's date is a range too
(``[date_start, date_end)`` in Unix seconds), and the prefixes compare ranges.
Dates without a time are taken in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from urllib.parse import urlencode

from .outcome import FHIRError
from .synthetic import normalise_text

Kind = Literal["id", "token", "string", "date", "reference"]

#: Search parameters per resource type, and their kind.
SEARCH_PARAMS: dict[str, dict[str, Kind]] = {
    "Patient": {
        "_id": "id",
        "name": "string",
        "family": "string",
        "given": "string",
        "birthdate": "date",
        "gender": "token",
        "identifier": "token",
    },
    "Observation": {
        "_id": "id",
        "patient": "reference",
        "subject": "reference",
        "code": "token",
        "category": "token",
        "date": "date",
    },
    "Condition": {"_id": "id", "patient": "reference", "subject": "reference", "code": "token"},
    "Encounter": {"_id": "id", "patient": "reference", "subject": "reference", "date": "date"},
    "MedicationRequest": {
        "_id": "id",
        "patient": "reference",
        "subject": "reference",
        "code": "token",
    },
    "Practitioner": {"_id": "id", "name": "string", "identifier": "token"},
    "RiskAssessment": {
        "_id": "id",
        "patient": "reference",
        "subject": "reference",
        "code": "token",
        "date": "date",
    },
    "AuditEvent": {"_id": "id"},
}
#: Types whose search results can be sorted by ``date``.
DATE_SORTABLE = frozenset({"Observation", "Encounter"})
#: Result parameters this server understands (``_cursor`` is its own paging cursor).
CONTROL_PARAMS = ("_count", "_sort", "_summary", "_elements", "_format", "_cursor")
#: Include parameters (each may carry ``:iterate``); resolved by :mod:`.includes`.
INCLUDE_PARAMS = ("_include", "_revinclude")
#: ``_summary`` values served (``count`` answers with ``Bundle.total`` alone).
SUMMARY_VALUES = ("true", "text", "data", "count", "false")
_ELEMENT = re.compile(r"^[a-z][A-Za-z0-9]{0,63}$")
MODIFIERS: dict[Kind, frozenset[str]] = {
    "id": frozenset(),
    "token": frozenset(),
    "string": frozenset({"contains"}),
    "date": frozenset(),
    "reference": frozenset({"Patient"}),
}
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})

DEFAULT_COUNT = 100
MAX_COUNT = 1000
MAX_PARAMS = 50
MAX_VALUE_LENGTH = 1024
MAX_ALTERNATIVES = 100

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.\d{1,9})?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,  # "\d" alone would also match Arabic-Indic and other Unicode digits
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_CURSOR = re.compile(
    r"^(?:s(?P<seq>\d{1,18})|d(?P<date>-?\d{1,18})\.(?P<dseq>\d{1,18}))$", re.ASCII
)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Clause:
    """One SQL condition over ``resources r`` with its bound arguments."""

    sql: str
    args: tuple[object, ...] = ()


FALSE = Clause("0")


@dataclass(frozen=True)
class Subquery:
    """``outer IN (SELECT inner FROM resources r WHERE r.type = target AND filter ...)``."""

    target_type: str
    outer: str
    inner: str
    filter: Clause


@dataclass
class SearchRequest:
    """A parsed search: filters, sort, page size and position."""

    resource_type: str
    filters: list[Clause] = field(default_factory=list)
    #: ``None`` (store order), ``"date"`` or ``"-date"``.
    sort: str | None = None
    count: int = DEFAULT_COUNT
    summary_count: bool = False
    #: ``(date_start, seq)`` or ``(None, seq)`` of the last row of the previous page.
    cursor: tuple[int | None, int] | None = None
    #: The parameters as received, without ``_cursor``, for ``self``/``next`` links.
    link_params: list[tuple[str, str]] = field(default_factory=list)
    #: ``(parameter, iterate, value)`` of each ``_include``/``_revinclude``.
    includes: list[tuple[str, bool, str]] = field(default_factory=list)
    #: Top-level elements to keep (``_elements``), or None for all.
    elements: list[str] | None = None
    #: ``_summary`` other than count/false: ``true``, ``text`` or ``data``.
    summary: str | None = None
    #: Chained and ``_has`` parameters: conditions on another type's resources,
    #: restricted by the token's scopes on that type before the search runs.
    subqueries: list[Subquery] = field(default_factory=list)

    def resolve(self, visibility: Callable[[str], Sequence[Clause]]) -> None:
        """Turn :attr:`subqueries` into filters, each limited by ``visibility(type)``."""
        for sub in self.subqueries:
            inner = [
                Clause("r.type = ?", (sub.target_type,)),
                sub.filter,
                *visibility(sub.target_type),
            ]
            args: list[object] = []
            for c in inner:
                args.extend(c.args)
            where = " AND ".join(f"({c.sql})" for c in inner)
            # The inner "resources r" shadows the outer one inside the sub-select.
            self.filters.append(
                Clause(
                    f"{sub.outer} IN (SELECT {sub.inner} FROM resources r WHERE {where})",  # noqa: S608 (fixed fragments)
                    tuple(args),
                )
            )
        self.subqueries = []

    def _where(self, extra: Sequence[Clause]) -> tuple[str, list[object]]:
        clauses = [Clause("r.type = ?", (self.resource_type,)), *self.filters, *extra]
        args: list[object] = []
        for clause in clauses:
            args.extend(clause.args)
        return " AND ".join(f"({c.sql})" for c in clauses), args

    def page_sql(self, extra: Sequence[Clause] = ()) -> tuple[str, list[object]]:
        """SQL for one page (``count + 1`` rows, to know whether a next page exists)."""
        where, args = self._where(extra)
        if self.sort is None:
            order = "r.seq"
            if self.cursor is not None:
                where += " AND r.seq > ?"
                args.append(self.cursor[1])
        else:
            direction = "DESC" if self.sort.startswith("-") else "ASC"
            order = f"r.date_start {direction}, r.seq {direction}"
            if self.cursor is not None:
                op = "<" if direction == "DESC" else ">"
                where += f" AND (r.date_start, r.seq) {op} (?, ?)"
                args.extend(self.cursor)
        sql = (
            f"SELECT r.seq, r.date_start, r.id, r.json FROM resources r "  # noqa: S608 (fixed fragments)
            f"WHERE {where} ORDER BY {order} LIMIT ?"
        )
        args.append(self.count + 1)
        return sql, args

    def count_sql(self, extra: Sequence[Clause] = ()) -> tuple[str, list[object]]:
        """SQL counting every match (``_summary=count``)."""
        where, args = self._where(extra)
        return f"SELECT COUNT(*) FROM resources r WHERE {where}", args  # noqa: S608

    def cursor_after(self, seq: int, date_start: int | None) -> str:
        """The ``_cursor`` value that continues after a row."""
        if self.sort is None:
            return f"s{seq}"
        return f"d{date_start}.{seq}"

    def link(self, base: str, cursor: str | None = None) -> str:
        """Absolute search URL for this query (at ``cursor`` if given)."""
        params = list(self.link_params)
        if cursor is not None:
            params.append(("_cursor", cursor))
        query = urlencode(params)
        return f"{base}/{self.resource_type}" + (f"?{query}" if query else "")


def split_values(raw: str) -> list[str]:
    """Split on unescaped commas and undo FHIR's ``\\`` escapes (``\\,`` ``\\|`` ``\\$`` ``\\\\``)."""
    values: list[str] = []
    current: list[str] = []
    chars = iter(raw)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            if nxt not in (",", "|", "$", "\\"):
                raise FHIRError(400, "a backslash in a search value must escape , | $ or \\")
            current.append("\\" + nxt if nxt == "|" else nxt)
        elif ch == ",":
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
    values.append("".join(current))
    return values


def _split_token(value: str) -> tuple[str | None, str | None]:
    """``(system, code)`` of a token value; ``None`` for "any", ``""`` system for "no system"."""
    parts = re.split(r"(?<!\\)\|", value)
    if len(parts) == 1:
        return None, parts[0].replace("\\|", "|")
    if len(parts) == 2:
        system, code = (p.replace("\\|", "|") for p in parts)
        return system, (code or None)
    raise FHIRError(400, f"token value {value!r} has more than one unescaped '|'")


def parse_date(text: str) -> tuple[int, int]:
    """The range ``[start, end)`` in Unix seconds that a FHIR date search value means."""
    match = _DATE.match(text)
    if not match and _DATE.match(text.replace(" ", "+")):
        raise FHIRError(
            400,
            f"date {text!r} has a space where a '+' belongs: a '+' in a URL query means a "
            "space, so send a positive timezone offset as %2B (e.g. %2B01:00)",
        )
    if not match:
        raise FHIRError(
            400,
            f"{text!r} is not a FHIR date: use YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss]+zz:zz",
        )
    if match["H"] is not None and match["tz"] is None:
        raise FHIRError(400, f"date {text!r} has a time but no timezone (add Z or +hh:mm)")
    offset = 0
    if match["tz"] and match["tz"] != "Z":
        sign = 1 if match["tz"][0] == "+" else -1
        hours, minutes = int(match["tz"][1:3]), int(match["tz"][4:6])
        if hours > 14 or minutes > 59:
            raise FHIRError(400, f"date {text!r} has an impossible timezone offset")
        offset = sign * (hours * 3600 + minutes * 60)
    # Naive calendar arithmetic, then the offset in whole seconds: the range of
    # 9999-12-31T23:59:59+14:00 ends after datetime.max, which datetime cannot hold.
    year = int(match["y"])
    try:
        if match["m"] is None:
            start = _epoch(datetime(year, 1, 1))
            end = _month_end(year, 12)
        elif match["d"] is None:
            month = int(match["m"])
            start = _epoch(datetime(year, month, 1))
            end = _month_end(year, month)
        elif match["H"] is None:
            start = _epoch(datetime(year, int(match["m"]), int(match["d"])))
            end = start + 86400
        else:
            start = _epoch(
                datetime(
                    year,
                    int(match["m"]),
                    int(match["d"]),
                    int(match["H"]),
                    int(match["M"]),
                    int(match["S"] or 0),
                )
            )
            end = start + (1 if match["S"] else 60)
    except ValueError as exc:
        raise FHIRError(400, f"date {text!r} is not a real date or time ({exc})") from None
    return start - offset, end - offset


_EPOCH = datetime(1970, 1, 1)


def _epoch(naive: datetime) -> int:
    """Seconds from 1970-01-01T00:00 to a naive date-time (read as UTC)."""
    return int((naive - _EPOCH).total_seconds())


def _month_end(year: int, month: int) -> int:
    """Seconds from the epoch to the end of ``month`` of ``year`` (exclusive), in UTC."""
    if month < 12:
        return _epoch(datetime(year, month + 1, 1))
    return _epoch(datetime(year, 12, 31)) + 86400  # also for 9999, where year + 1 cannot exist


def _any(clauses: list[Clause]) -> Clause:
    """The OR of ``clauses``."""
    if len(clauses) == 1:
        return clauses[0]
    args: list[object] = []
    for c in clauses:
        args.extend(c.args)
    return Clause(" OR ".join(f"({c.sql})" for c in clauses), tuple(args))


def _chain(resource_type: str, key: str, value: str, fhir_base: str) -> Subquery:
    """``patient.name=x`` / ``subject:Patient.family=x``: a condition on the referenced Patient."""
    reference, _, chained = key.partition(".")
    name, _, target = reference.partition(":")
    supported = SEARCH_PARAMS[resource_type]
    if supported.get(name) != "reference":
        raise FHIRError(
            400,
            f"chained parameter {key!r}: {name!r} is not a reference parameter of {resource_type}"
            f" (chains here: {', '.join(n + '.<Patient parameter>' for n, k in supported.items() if k == 'reference') or 'none'})",
        )
    if target not in ("", "Patient"):
        raise FHIRError(400, f"chained parameter {key!r}: {name} refers to Patients only here")
    inner_name, _, modifier = chained.partition(":")
    if "." in chained or inner_name not in SEARCH_PARAMS["Patient"]:
        raise FHIRError(
            400,
            f"chained parameter {key!r}: {chained!r} is not a Patient search parameter "
            f"(one level of chaining; supported: {', '.join(SEARCH_PARAMS['Patient'])})",
        )
    inner = filter_clause("Patient", inner_name, modifier or None, value, fhir_base)
    return Subquery("Patient", "r.patient", "r.id", inner)


def _has(resource_type: str, key: str, value: str, fhir_base: str) -> Subquery:
    """``_has:Observation:patient:code=x`` on Patient: patients some such Observation refers to."""
    parts = key.split(":")
    if len(parts) < 4 or parts[0] != "_has":
        raise FHIRError(400, f"{key!r}: write _has:<Type>:<reference parameter>:<parameter>")
    _, source, reference, name = parts[:4]
    modifier = parts[4] if len(parts) > 4 else None
    if source not in SEARCH_PARAMS:
        raise FHIRError(400, f"{key!r}: {source!r} is not a resource type this server has")
    if SEARCH_PARAMS[source].get(reference) != "reference" or resource_type != "Patient":
        raise FHIRError(
            400,
            f"{key!r}: here _has works on Patient searches, through a patient/subject "
            f"reference of the other type (e.g. _has:Observation:patient:code=...)",
        )
    if name not in SEARCH_PARAMS[source] or name.startswith("_has"):
        raise FHIRError(400, f"{key!r}: {name!r} is not a search parameter of {source}")
    inner = filter_clause(source, name, modifier, value, fhir_base)
    return Subquery(source, "r.id", "r.patient", inner)


def _date_clause(value: str, start: str = "r.date_start", end: str = "r.date_end") -> Clause:
    """A date search value compared with the range ``[start, end)`` (fixed column fragments)."""
    clause = _date_clause_columns(value)
    return Clause(clause.sql.replace("r.date_start", start).replace("r.date_end", end), clause.args)


def _date_clause_columns(value: str) -> Clause:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    if value[:2].isalpha() and value[:2] not in _PREFIXES and _DATE.match(value[2:]):
        raise FHIRError(
            400, f"unsupported date prefix {value[:2]!r}; use one of {', '.join(_PREFIXES)}"
        )
    start, end = parse_date(text)
    within = "(r.date_start >= ? AND r.date_end <= ?)"
    if prefix == "eq":
        return Clause(within, (start, end))
    if prefix == "ne":
        return Clause(f"NOT {within}", (start, end))
    if prefix == "gt":
        return Clause("r.date_end > ?", (end,))
    if prefix == "lt":
        return Clause("r.date_start < ?", (start,))
    if prefix == "ge":
        return Clause(f"(r.date_end > ? OR {within})", (end, start, end))
    if prefix == "le":
        return Clause(f"(r.date_start < ? OR {within})", (start, start, end))
    if prefix == "sa":
        return Clause("r.date_start >= ?", (end,))
    return Clause("r.date_end <= ?", (start,))  # eb


#: Parameters that match few resources: their index entries drive the query
#: (``r.seq IN (...)``) instead of being checked row by row (``EXISTS``), which
#: would scan every resource of the store for ``Patient?identifier=...``.
SELECTIVE = frozenset({"identifier", "name", "family", "given"})


def _index_lookup(param: str, alternatives: list[str], args: list[object]) -> Clause:
    """An index-entry condition; ``alternatives`` are fixed SQL fragments of this module.

    Broad parameters (``code``, ``category``, ``gender``) stay a correlated
    ``EXISTS`` so that SQLite keeps driving from the patient/date indexes and
    never materialises hundreds of thousands of matches for one page.
    """
    joined = " OR ".join(alternatives)
    if param in SELECTIVE:
        sql = f"r.seq IN (SELECT t.seq FROM tokens t WHERE t.param = ? AND ({joined}))"  # noqa: S608
    else:
        sql = f"EXISTS (SELECT 1 FROM tokens t WHERE t.seq = r.seq AND t.param = ? AND ({joined}))"  # noqa: S608
    return Clause(sql, tuple(args))


def _token_clause(param: str, values: list[str]) -> Clause:
    alternatives: list[str] = []
    args: list[object] = [param]
    for value in values:
        system, code = _split_token(value)
        if system is None:
            alternatives.append("t.value = ?")
            args.append(code)
        elif system == "":
            if code is None:
                raise FHIRError(400, f"token value {value!r} names neither system nor code")
            alternatives.append("(t.system = '' AND t.value = ?)")
            args.append(code)
        elif code is None:
            alternatives.append("t.system = ?")
            args.append(system)
        else:
            alternatives.append("(t.system = ? AND t.value = ?)")
            args.extend((system, code))
    return _index_lookup(param, alternatives, args)


def _string_clause(param: str, values: list[str], modifier: str | None) -> Clause:
    alternatives: list[str] = []
    args: list[object] = [param]
    for value in values:
        norm = normalise_text(value)
        if modifier == "contains":
            alternatives.append("instr(t.value, ?) > 0")
            args.append(norm)
        else:
            # Starts-with as a range, so that the (param, value) index serves it.
            alternatives.append("(t.value >= ? AND t.value < ?)")
            args.extend((norm, norm + "\U0010ffff"))
    return _index_lookup(param, alternatives, args)


def _reference_ids(name: str, values: list[str], fhir_base: str) -> list[str]:
    """Patient ids from ``id``, ``Patient/id`` or ``{fhir_base}/Patient/id``."""
    ids: list[str] = []
    for value in values:
        ref = value
        if ref.startswith(("http://", "https://")):
            if not ref.startswith(fhir_base + "/"):
                raise FHIRError(400, f"{name}: reference {value!r} is not on this server")
            ref = ref[len(fhir_base) + 1 :]
        if "/" in ref:
            rtype, _, rid = ref.partition("/")
            if rtype != "Patient":
                if name == "patient":
                    raise FHIRError(400, f"patient: {value!r} is not a Patient reference")
                continue  # subject=Group/x: valid, but nothing here has such a subject
            ref = rid
        if not _ID.match(ref):
            raise FHIRError(400, f"{name}: {value!r} is not a valid resource id")
        ids.append(ref)
    return ids


def filter_clause(
    resource_type: str, name: str, modifier: str | None, raw: str, fhir_base: str
) -> Clause:
    """SQL for one ``name[:modifier]=raw`` search parameter of ``resource_type``."""
    kind = SEARCH_PARAMS[resource_type][name]
    if modifier is not None and modifier not in MODIFIERS[kind]:
        raise FHIRError(400, f"modifier ':{modifier}' is not supported on {resource_type} {name}")
    if raw == "":
        raise FHIRError(400, f"search parameter {name!r} has an empty value")
    if len(raw) > MAX_VALUE_LENGTH:
        raise FHIRError(
            400, f"search parameter {name!r} is longer than {MAX_VALUE_LENGTH} characters"
        )
    values = split_values(raw)
    if len(values) > MAX_ALTERNATIVES:
        raise FHIRError(400, f"search parameter {name!r} has more than {MAX_ALTERNATIVES} values")
    if any(v == "" for v in values):
        raise FHIRError(400, f"search parameter {name!r} has an empty value between commas")
    if kind != "token":  # only token values give '|' a meaning; elsewhere "\|" is a '|'
        values = [v.replace("\\|", "|") for v in values]
    if kind == "id":
        for v in values:
            if not _ID.match(v):
                raise FHIRError(400, f"_id: {v!r} is not a valid resource id")
        return Clause(f"r.id IN ({','.join('?' * len(values))})", tuple(values))
    if kind == "reference":
        ids = _reference_ids(name, values, fhir_base)
        if not ids:
            return FALSE
        if len(ids) == 1:
            return Clause("r.patient = ?", (ids[0],))
        return Clause(f"r.patient IN ({','.join('?' * len(ids))})", tuple(ids))
    if kind == "token":
        return _token_clause(name, values)
    if kind == "string":
        return _string_clause(name, values, modifier)
    clauses = [_date_clause(v) for v in values]
    if len(clauses) == 1:
        return clauses[0]
    args: list[object] = []
    for c in clauses:
        args.extend(c.args)
    return Clause(" OR ".join(f"({c.sql})" for c in clauses), tuple(args))


def _single(name: str, values: list[str]) -> str:
    if len(values) > 1:
        raise FHIRError(400, f"{name} may be given only once")
    return values[0]


def parse_search(
    resource_type: str, params: Sequence[tuple[str, str]], fhir_base: str
) -> SearchRequest:
    """Parse a search's parameters (query string and/or form body) strictly."""
    if resource_type not in SEARCH_PARAMS:
        raise FHIRError(404, f"resource type {resource_type!r} is not supported by this server")
    if len(params) > MAX_PARAMS:
        raise FHIRError(400, f"more than {MAX_PARAMS} search parameters")
    supported = SEARCH_PARAMS[resource_type]
    request = SearchRequest(resource_type)
    control: dict[str, list[str]] = {}
    for key, value in params:
        if key == "access_token":
            raise FHIRError(
                400,
                "access tokens are accepted only in the Authorization header "
                "(never in URLs, where logs and browser history keep them)",
            )
        if key in CONTROL_PARAMS:
            control.setdefault(key, []).append(value)
            if key != "_cursor":
                request.link_params.append((key, value))
            continue
        name, _, modifier = key.partition(":")
        if name in INCLUDE_PARAMS:
            if modifier not in ("", "iterate"):
                raise FHIRError(400, f"{name} takes only the :iterate modifier, not {modifier!r}")
            request.includes.append((name, modifier == "iterate", value))
            request.link_params.append((key, value))
            continue
        if name == "_lastUpdated":
            if modifier:
                raise FHIRError(400, "_lastUpdated takes no modifier")
            clauses = [
                _date_clause(v, "r.last_updated", "(r.last_updated + 1)")
                for v in split_values(value)
            ]
            request.filters.append(_any(clauses))
            request.link_params.append((key, value))
            continue
        if name.startswith("_has:") or key.startswith("_has:"):
            request.subqueries.append(_has(resource_type, key, value, fhir_base))
            request.link_params.append((key, value))
            continue
        if "." in key:
            request.subqueries.append(_chain(resource_type, key, value, fhir_base))
            request.link_params.append((key, value))
            continue
        if name not in supported:
            hint = ", ".join([*supported, *CONTROL_PARAMS[:-1]])
            raise FHIRError(
                400,
                f"unknown search parameter {key!r} for {resource_type}; supported: {hint}",
            )
        request.filters.append(
            filter_clause(resource_type, name, modifier or None, value, fhir_base)
        )
        request.link_params.append((key, value))

    if "_format" in control and _single("_format", control["_format"]) not in JSON_FORMATS:
        raise FHIRError(406, "this server speaks JSON only (_format=json)")
    if "_count" in control:
        text = _single("_count", control["_count"])
        # isascii: str.isdigit() is also true of '¹' and '٣', which int() refuses or misreads.
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise FHIRError(400, f"_count must be a whole number from 0, got {text!r}")
        request.count = min(int(text), MAX_COUNT)
        request.summary_count = request.count == 0
    if "_summary" in control:
        summary = _single("_summary", control["_summary"])
        if summary == "count":
            request.summary_count = True
        elif summary in ("true", "text", "data"):
            request.summary = summary
        elif summary != "false":
            raise FHIRError(
                400, f"_summary={summary!r} is not supported; use {', '.join(SUMMARY_VALUES)}"
            )
    if "_elements" in control:
        names = [n.strip() for n in ",".join(control["_elements"]).split(",") if n.strip()]
        bad = [n for n in names if not _ELEMENT.match(n)]
        if bad or not names:
            raise FHIRError(
                400, f"_elements takes top-level element names (e.g. code,subject), not {bad[:3]}"
            )
        request.elements = names
    if "_sort" in control:
        sort = _single("_sort", control["_sort"])
        if sort not in ("date", "-date"):
            raise FHIRError(400, f"_sort={sort!r} is not supported; use date or -date")
        if resource_type not in DATE_SORTABLE:
            raise FHIRError(400, f"{resource_type} cannot be sorted by date here")
        request.sort = sort
    if "_cursor" in control:
        text = _single("_cursor", control["_cursor"])
        match = _CURSOR.match(text)
        if not match or (match["seq"] is not None) != (request.sort is None):
            raise FHIRError(
                400, "_cursor is not one this server issued for this search; follow the next link"
            )
        if match["seq"] is not None:
            request.cursor = (None, int(match["seq"]))
        else:
            request.cursor = (int(match["date"]), int(match["dseq"]))
    return request
