"""A SQLite index over the audit log, built incrementally and checked against the chain.

Questions such as "who saw patient X" must not read ten million lines each
time, so the log is indexed: one row per record with the columns the queries
filter on (time, action, user, patient, issuer...) and *where* the line is
(file, offset, length) plus the SHA-256 of its bytes. The index is a cache
derived from the log, never a second source of truth:

* **Built from verified lines only.** Each line's ``seq``, ``log_id`` and
  ``prev`` are checked as it is indexed (``prev`` must be the SHA-256 of the
  line before, across files and across runs, through the head kept in the
  index), and the last line read is checked against its own ``hash``. So every
  indexed line is fixed by the chain exactly as ``audit verify`` sees it.
* **Incremental.** The index remembers, per file, the first and last ``seq``,
  how many bytes it covered and the hash of the last line; an update reads only
  what was appended to the live file, and files that appeared since. Files are
  known by the ``seq`` of their first line, so a rotation (the live file
  renamed to ``<name>.<seq>``) or a compression (``<name>.<seq>.gz``) is
  recognised; a file whose size or time changed is read again in full and
  every line compared with the hash the index holds.
* **Checked on use.** Before answering, every known file must still be there
  and unchanged (or re-verified as above), and the live file must still end,
  at the indexed offset, with the indexed head. Every line a query returns is
  read from the log again and must hash to what the index recorded. A log
  edited after indexing, or an index edited by hand, fails with
  :class:`IndexMismatch`, which says which ``seq`` and what to run.

Rotated files compressed with gzip (``<name>.<12 digits>.gz``) are read
transparently. What the index cannot show on its own is what ``audit verify``
cannot either: lines cut off the end of the log (see docs/audit.md).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import multiprocessing
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson

from .chain import GENESIS, RecordError, parse_line
from .events import ACTION_SYSTEM, ISSUER_SYSTEM, SERVER_SYSTEM

__all__ = [
    "SCHEMA_VERSION",
    "AuditIndex",
    "IndexMismatch",
    "IndexRow",
    "columns_of",
    "default_index_path",
    "log_files",
    "patients_of",
    "row_of",
]

SCHEMA_VERSION = "3"
#: Bytes read from a log file at a time while indexing.
_CHUNK = 8 * 1024 * 1024
#: Rows handed to SQLite per executemany.
_BATCH = 20_000
#: A fresh index over at least this many bytes of log is built by worker processes.
_PARALLEL_MIN_BYTES = 32 * 1024 * 1024
#: Runs of files the workers build at most (each is attached to the index to be
#: copied in, and SQLite attaches at most 10 databases).
_MAX_PARTS = 8
_ROTATED_NAME = re.compile(r"\.(\d{12})(\.gz)?$")
#: Longest line accepted (as in :mod:`.verify`): anything longer is not an audit record.
MAX_LINE_BYTES = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    first_seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    compressed INTEGER NOT NULL,
    stat_size INTEGER NOT NULL,
    stat_mtime INTEGER NOT NULL,
    covered INTEGER NOT NULL,      -- bytes of (uncompressed) content indexed
    last_seq INTEGER NOT NULL,
    last_offset INTEGER NOT NULL   -- where the last indexed line starts
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    file_seq INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    hash BLOB NOT NULL,
    time TEXT NOT NULL,
    action TEXT,
    outcome TEXT,
    user TEXT,
    fhir_user TEXT,
    address TEXT,
    patient TEXT,
    issuer TEXT,
    server TEXT,
    resource_type TEXT,
    interaction TEXT,
    count INTEGER
);
-- Patients of records that name more than one (a FHIR proxy search across patients):
-- events.patient holds one of them, this table every one, in whatever form each is
-- referenced.
CREATE TABLE IF NOT EXISTS event_patients (
    patient TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (patient, seq)
) WITHOUT ROWID;
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS events_patient ON events (patient, seq) WHERE patient IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_user ON events (user, seq);
CREATE INDEX IF NOT EXISTS events_fhir_user ON events (fhir_user, seq) WHERE fhir_user IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_action ON events (action, seq);
"""
_COLUMNS = (
    "seq, file_seq, offset, length, hash, time, action, outcome, user, fhir_user, address, "
    "patient, issuer, server, resource_type, interaction, count"
)

_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * 17)})"  # noqa: S608


class IndexMismatch(Exception):
    """The log and its index disagree (an edited log, a missing file, or an edited index)."""


@dataclass(frozen=True)
class IndexRow:
    """What the index knows about one record (the columns queries filter and show)."""

    seq: int
    time: str
    action: str | None
    outcome: str | None
    user: str | None
    fhir_user: str | None
    address: str | None
    patient: str | None
    issuer: str | None
    server: str | None
    resource_type: str | None
    interaction: str | None
    count: int | None


@dataclass
class _LogFile:
    path: Path
    first_seq: int
    compressed: bool
    stat_size: int
    stat_mtime: int


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The live log at ``path`` and its rotated files beside it (``.gz`` too), any order."""
    live = Path(path).absolute()
    found = [live] if live.is_file() else []
    if live.parent.is_dir():
        for candidate in live.parent.iterdir():
            name = candidate.name
            rest = name[len(live.name) :]
            if name.startswith(live.name + ".") and _ROTATED_NAME.fullmatch(rest):
                found.append(candidate)
    if not found:
        raise FileNotFoundError(f"no such audit log file: {path}")
    return found


def default_index_path(log_path: str | os.PathLike[str]) -> Path:
    """``<log>.index.sqlite`` beside the log, or in the user's cache when that is read-only."""
    live = Path(log_path).absolute()
    beside = live.with_name(live.name + ".index.sqlite")
    if os.access(live.parent, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(live).encode()).hexdigest()[:16]
    return cache / "jupyterhub-smart" / f"audit-index-{digest}.sqlite"


def _open_bytes(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _first_seq(path: Path) -> int | None:
    """The ``seq`` of a file's first complete line (None: none yet); RecordError if not a record."""
    with _open_bytes(path) as handle:
        first = handle.readline(MAX_LINE_BYTES + 1)
    if not first.endswith(b"\n"):
        return None  # empty, or its first line still being written: nothing to index yet
    seq = parse_line(first[:-1])["seq"]
    assert isinstance(seq, int)
    return seq


def _describe(path: Path, first_seq: int) -> _LogFile:
    st = path.stat()
    return _LogFile(path, first_seq, path.name.endswith(".gz"), st.st_size, st.st_mtime_ns)


def row_of(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The filter columns of one record: (time, action, outcome, user, fhir_user, address,
    patient, issuer, server, resource_type, interaction, count)."""
    action = None
    for coding in record.get("subtype") or ():
        if coding.get("system") == ACTION_SYSTEM:
            action = coding.get("code")
            break
    user = fhir_user = address = server = None
    for agent in record.get("agent") or ():
        if agent.get("requestor"):
            user = agent.get("altId")
            who = agent.get("who") or {}
            fhir_user = who.get("reference")
            network = agent.get("network")
            if network:
                address = network.get("address")
        else:
            ident = (agent.get("who") or {}).get("identifier")
            if ident and ident.get("system") == SERVER_SYSTEM:
                server = ident.get("value")
    patient = issuer = resource_type = interaction = None
    count: int | None = None
    for entity in record.get("entity") or ():
        what = entity.get("what") or {}
        role = entity.get("role")
        if role and role.get("code") == "1":
            patient = what.get("reference")
            continue
        ident = what.get("identifier")
        if ident and ident.get("system") == ISSUER_SYSTEM:
            issuer = ident.get("value")
        name = entity.get("name")
        if name:
            resource_type = name
            ref = what.get("reference")
            if patient is None and name == "Patient" and ref:
                patient = ref
            for detail in entity.get("detail") or ():
                kind = detail.get("type")
                if kind == "interaction":
                    interaction = detail.get("valueString")
                elif kind == "count":
                    with contextlib.suppress(TypeError, ValueError):
                        count = int(detail.get("valueString"))
    return (
        record.get("time"),
        action,
        record.get("outcome"),
        user,
        fhir_user,
        address,
        patient,
        issuer,
        server,
        resource_type,
        interaction,
        count,
    )


def patients_of(record: Mapping[str, Any]) -> list[str]:
    """Every patient a record names (entities in the Patient role), in order, once each."""
    found = [
        ref
        for entity in record.get("entity") or ()
        if (entity.get("role") or {}).get("code") == "1"
        and isinstance(ref := (entity.get("what") or {}).get("reference"), str)
    ]
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------ reading the log
# The columns of a record as :func:`row_of` finds them, decoded by msgspec into these
# few types: only the members the index reads are built as Python objects, the rest of
# the line (most of its bytes) is parsed and checked as JSON but skipped. Members are
# typed ``Any`` where ``row_of`` takes the value as it is; containers are typed, so a
# record of any other shape (a list where an object is expected...) fails to decode
# and is read by orjson and :func:`row_of` themselves: the fast path never decides a
# case the reference code would decide differently. Objects whose truth value
# ``row_of`` tests (``network``) stay dicts for the same reason.
class _Coding(msgspec.Struct, gc=False):
    system: Any = None
    code: Any = None


class _Identifier(msgspec.Struct, gc=False):
    system: Any = None
    value: Any = None


class _Who(msgspec.Struct, gc=False):
    reference: Any = None
    identifier: _Identifier | None = None


class _Agent(msgspec.Struct, gc=False):
    requestor: Any = None
    altId: Any = None
    who: _Who | None = None
    network: dict[str, Any] | None = None


class _Detail(msgspec.Struct, gc=False):
    type: Any = None
    valueString: Any = None


class _Role(msgspec.Struct, gc=False):
    code: Any = None


class _Entity(msgspec.Struct, gc=False):
    role: _Role | None = None
    what: _Who | None = None
    name: Any = None
    detail: list[_Detail] | None = None


class _Record(msgspec.Struct, gc=False):
    seq: Any
    prev: Any
    log_id: Any
    time: Any = None
    outcome: Any = None
    subtype: list[_Coding] | None = None
    agent: list[_Agent] | None = None
    entity: list[_Entity] | None = None


_decode_record = msgspec.json.Decoder(_Record).decode


def _columns(rec: _Record, prefix: tuple[Any, ...], named: list[str]) -> tuple[Any, ...]:
    """``prefix`` + :func:`row_of` for a decoded record; ``named`` gets the references
    :func:`patients_of` would list (before removing repeats).

    Statement for statement the reference code, over the typed members.
    """
    action = None
    for coding in rec.subtype or ():
        if coding.system == ACTION_SYSTEM:
            action = coding.code
            break
    user = fhir_user = address = server = None
    for agent in rec.agent or ():
        who = agent.who
        if agent.requestor:
            user = agent.altId
            fhir_user = None if who is None else who.reference
            network = agent.network
            if network:
                address = network.get("address")
        elif who is not None:
            ident = who.identifier
            if ident is not None and ident.system == SERVER_SYSTEM:
                server = ident.value
    patient = issuer = resource_type = interaction = None
    count: int | None = None
    for entity in rec.entity or ():
        what = entity.what
        ref = None if what is None else what.reference
        role = entity.role
        if role is not None and role.code == "1":
            if isinstance(ref, str):
                named.append(ref)
            patient = ref
            continue
        if what is not None:
            ident = what.identifier
            if ident is not None and ident.system == ISSUER_SYSTEM:
                issuer = ident.value
        name = entity.name
        if name:
            resource_type = name
            if patient is None and name == "Patient" and ref:
                patient = ref
            for detail in entity.detail or ():
                kind = detail.type
                if kind == "interaction":
                    interaction = detail.valueString
                elif kind == "count":
                    with contextlib.suppress(TypeError, ValueError):
                        count = int(detail.valueString)
    return (
        *prefix,
        rec.time,
        action,
        rec.outcome,
        user,
        fhir_user,
        address,
        patient,
        issuer,
        server,
        resource_type,
        interaction,
        count,
    )


def columns_of(line: bytes, record: Mapping[str, Any]) -> tuple[Any, ...]:
    """:func:`row_of` of ``record``, parsed from ``line``: the typed decoder's reading when
    the line's shape fits its types (the same values, for less work), else ``row_of``."""
    try:
        rec = _decode_record(line)
    except msgspec.MsgspecError:
        return row_of(record)
    return _columns(rec, (), [])


def _prev_broken(seq: Any, name: str, pos: int) -> str:
    return (
        f"seq {seq}: prev does not match the line before it ({name}, offset {pos}): the log "
        "was edited; run `jupyterhub-smart audit verify`"
    )


def _other_log(seq: Any, line_log: Any, log_id: str) -> str:
    return (
        f"seq {seq}: the line belongs to another log (log_id {line_log}, the index is of "
        f"{log_id}); use another --index, or delete this one"
    )


#: Compares unequal to anything a line holds (see :func:`_scan`).
_UNKNOWN: Any = object()


@dataclass
class _Scanned:
    """How far :func:`_scan` got: kept up to date as it reads, so it tells even after an error."""

    log_id: str = ""
    head_seq: int = 0
    head_hash: str = ""
    last_offset: int = 0
    covered: int = 0
    any_line: bool = False
    #: The first line was read and had the expected seq; its prev and log_id (unchecked
    #: when :func:`_scan` was given ``prev=None``: a worker's run, checked by the caller).
    first_checked: bool = False
    first_prev: Any = None
    first_log: Any = None


class _Store:
    """Rows to one SQLite database, a batch at a time."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __call__(self, rows: list[tuple[Any, ...]], patient_rows: list[tuple[str, int]]) -> None:
        if rows:
            self.db.executemany(_INSERT, rows)
            rows.clear()
        if patient_rows:
            self.db.executemany(
                "INSERT OR REPLACE INTO event_patients (patient, seq) VALUES (?, ?)", patient_rows
            )
            patient_rows.clear()


def _scan(
    handle: IO[bytes],
    name: str,
    file_seq: int,
    offset: int,
    expected: int,
    prev: str | None,
    state: _Scanned,
    store: Callable[[list[tuple[Any, ...]], list[tuple[str, int]]], None],
    *,
    adopt: Callable[[str], None],
) -> None:
    """Check and extract every complete line of ``handle`` (positioned at ``offset``).

    Each line must carry ``seq`` ``expected``, ``expected + 1``..., the hash of
    the line before as ``prev`` (``prev``: the hash before the first line;
    empty: the first line's is taken as it is; None: it is only reported in
    ``state``), and the index's ``log_id`` (``state.log_id`` empty: the first
    line's is adopted and ``adopt`` called). Rows go to ``store``; the last
    line is checked against its own ``hash``. Raises :class:`IndexMismatch`.
    """
    sha256 = hashlib.sha256
    loads = orjson.loads
    decode = _decode_record
    columns = _columns
    fast_error = msgspec.MsgspecError
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    patient_rows: list[tuple[str, int]] = []
    named: list[str] = []
    log_id = state.log_id
    seq: Any = expected - 1
    # The prev the next line must carry; _UNKNOWN (equal to nothing): the first line of
    # a worker's run, whose prev and log_id the caller checks.
    prev_hex: Any = _UNKNOWN if prev is None else prev
    pos = offset
    last_offset = offset
    state.head_seq, state.head_hash = expected - 1, prev or ""
    state.last_offset = state.covered = offset
    last_line = b""
    carry = b""
    while True:
        chunk = handle.read(_CHUNK)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        complete = data.rfind(b"\n") + 1
        carry = data[complete:]
        if len(carry) > MAX_LINE_BYTES:
            raise IndexMismatch(
                f"a line longer than {MAX_LINE_BYTES:,} bytes after offset {pos}: not an "
                "audit record; run `jupyterhub-smart audit verify`"
            )
        view = memoryview(data)
        find = data.find
        start = 0
        last_start = -1
        while start < complete:
            end = find(b"\n", start)
            line = view[start:end]
            try:
                rec = decode(line)
                seq, line_prev, line_log = rec.seq, rec.prev, rec.log_id
                record = None
            except fast_error:
                try:
                    record = loads(line)
                    seq = record["seq"]
                    line_prev = record["prev"]
                    line_log = record["log_id"]
                except (orjson.JSONDecodeError, TypeError, KeyError):
                    raise IndexMismatch(
                        f"seq {expected}: not an audit record ({name}, offset {pos}); "
                        "run `jupyterhub-smart audit verify`"
                    ) from None
            if seq != expected:
                raise IndexMismatch(
                    f"seq {expected}: found seq {seq} instead ({name}, offset "
                    f"{pos}): lines deleted, reordered or inserted; run "
                    "`jupyterhub-smart audit verify`"
                )
            if line_prev != prev_hex or line_log != log_id or not log_id:
                # The rare cases, in the order the checks are made.
                if prev_hex is _UNKNOWN:
                    state.first_checked = True
                    state.first_prev, state.first_log = line_prev, line_log
                    log_id = state.log_id = line_log
                else:
                    if line_prev != prev_hex and not (prev_hex == "" and expected == file_seq):
                        # (empty: the first retained record, nothing before it to check)
                        raise IndexMismatch(_prev_broken(seq, name, pos))
                    if not log_id:
                        log_id = state.log_id = line_log
                        adopt(log_id)
                    elif line_log != log_id:
                        raise IndexMismatch(_other_log(seq, line_log, log_id))
            digest = sha256(line).digest()
            prev_hex = digest.hex()
            length = end - start
            if record is None:
                append(columns(rec, (seq, file_seq, pos, length, digest), named))
            else:
                append((seq, file_seq, pos, length, digest, *row_of(record)))
                named = patients_of(record)
            if named:
                if len(named) > 1:
                    # Every patient of a record naming several, whatever form its
                    # references take (Patient/..., an absolute URL, urn:uuid:...).
                    named = list(dict.fromkeys(named))
                    if len(named) > 1:
                        patient_rows += [(p, seq) for p in named]
                named = []
            expected = seq + 1
            last_start = start
            last_offset = pos
            pos += length + 1
            start = end + 1
            if len(rows) >= _BATCH:
                store(rows, patient_rows)
        if last_start >= 0:
            last_line = data[last_start : data.find(b"\n", last_start)]
            state.any_line = True
            state.head_seq, state.head_hash = expected - 1, prev_hex
            state.last_offset, state.covered = last_offset, pos
    store(rows, patient_rows)
    if last_line:
        try:
            parse_line(last_line)  # the last line is covered by no later prev: self-check
        except RecordError as exc:
            raise IndexMismatch(
                f"seq {expected - 1}: {exc} ({name}); run `jupyterhub-smart audit verify`"
            ) from None


def _scan_run(
    files: list[tuple[str, int]], part: str
) -> tuple[list[_Scanned], BaseException | None]:
    """A worker: :func:`_scan` consecutive log files into the SQLite file ``part``.

    Returns how far each file got and the error that stopped the run (raised by
    the caller only after it checked the run's first line against the run before).
    """
    db = sqlite3.connect(part, isolation_level=None)
    states: list[_Scanned] = []
    error: BaseException | None = None
    try:
        db.execute("PRAGMA journal_mode=OFF")  # a throw-away file: no journal, no sync
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        store = _Store(db)
        prev: str | None = None
        log_id = ""
        for path, first_seq in files:
            state = _Scanned(log_id=log_id)
            states.append(state)
            with _open_bytes(Path(path)) as handle:
                _scan(
                    handle,
                    Path(path).name,
                    first_seq,
                    0,
                    first_seq,
                    prev,
                    state,
                    store,
                    adopt=lambda _log_id: None,
                )
            prev, log_id = state.head_hash, state.log_id
        db.execute("COMMIT")
    except Exception as exc:  # the caller raises it in log order
        error = exc
    finally:
        db.close()
    return states, error


def _runs(files: list[_LogFile], n: int) -> list[list[_LogFile]]:
    """``files`` cut into ``n`` runs of consecutive files of about equal size."""
    total = sum(f.stat_size for f in files) or 1
    runs: list[list[_LogFile]] = [[] for _ in range(n)]
    seen = 0
    for f in files:
        runs[min(n - 1, seen * n // total)].append(f)
        seen += f.stat_size
    return [run for run in runs if run]


class AuditIndex:
    """The index of one audit log. ``update()`` brings it up to date; queries use ``db``.

    Use as a context manager, or call :meth:`close`. One process updates at a
    time (SQLite's write lock, waited on for up to ``busy_timeout`` seconds).
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        index_path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout: float = 60.0,
        workers: int | None = None,
    ) -> None:
        self.log_path = Path(log_path).absolute()
        #: Processes that build a fresh index (None: one per CPU, for logs of at least
        #: :data:`_PARALLEL_MIN_BYTES`; 1: this process alone).
        self.workers = workers
        #: Worker processes the last update used (0: it ran in this process alone).
        self.workers_used = 0
        self._attached: list[str] = []
        self._cleanup: Path | None = None
        self.index_path = Path(index_path) if index_path else default_index_path(self.log_path)
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.index_path.exists()
        self.db = sqlite3.connect(self.index_path, timeout=busy_timeout, isolation_level=None)
        try:
            if fresh:
                with contextlib.suppress(OSError):
                    os.chmod(self.index_path, 0o600)  # it names patients, like the log
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            version = self._meta("version")
            if version is not None and version.isdigit() and int(version) < int(SCHEMA_VERSION):
                self._clear()  # an older format: a cache of the log, rebuilt by update()
                version = None
            if version is None:
                self._set_meta("version", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise IndexMismatch(
                    f"the index {self.index_path} has format {version}, this version reads "
                    f"{SCHEMA_VERSION}: delete it (it is rebuilt from the log)"
                )
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise IndexMismatch(
                f"the index {self.index_path} cannot be used ({exc}): delete it (it is rebuilt "
                "from the log), or choose another with --index"
            ) from None
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AuditIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ meta
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _clear(self) -> None:
        """Empty every table: the next :meth:`update` builds the index afresh from the log."""
        self.db.execute("BEGIN IMMEDIATE")
        for table in ("events", "event_patients", "files", "meta"):
            self.db.execute(f"DELETE FROM {table}")  # noqa: S608
        self.db.execute("COMMIT")

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, line hash)`` of the last indexed record (0 and zeros when empty)."""
        return int(self._meta("head_seq") or 0), self._meta("head_hash") or GENESIS

    @property
    def log_id(self) -> str:
        return self._meta("log_id") or ""

    @property
    def first_seq(self) -> int:
        """The first ``seq`` the index holds (after retention removed older files: not 1)."""
        row = self.db.execute("SELECT MIN(first_seq) FROM files").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # ---------------------------------------------------------------- update
    def update(self) -> int:
        """Check the index against the log and index what is new; the number of new records.

        Raises :class:`IndexMismatch` when the log no longer matches what was
        indexed, :class:`FileNotFoundError` when the log is not there.
        """
        files = self._discover()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                try:
                    added = self._update(files)
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            finally:
                self._detach()
            self.db.executescript(_INDEXES)  # after a first build's bulk insert: much faster
        except sqlite3.DatabaseError as exc:
            raise IndexMismatch(
                f"the index {self.index_path} cannot be used ({exc}): delete it (it is rebuilt "
                "from the log), or choose another with --index"
            ) from None
        return added

    def _discover(self) -> list[_LogFile]:
        # A file the index holds under the same name, size and modification time is
        # taken as indexed without opening it (what _update would conclude anyway):
        # a query over hundreds of rotated files then reads none of them but its hits.
        indexed = {
            (name, bool(compressed), size, mtime): first_seq
            for first_seq, name, compressed, size, mtime in self.db.execute(
                "SELECT first_seq, name, compressed, stat_size, stat_mtime FROM files"
            )
        }
        found: dict[int, _LogFile] = {}
        for path in log_files(self.log_path):
            try:
                st = path.stat()
                compressed = path.name.endswith(".gz")
                key = (path.name, compressed, st.st_size, st.st_mtime_ns)
                first = indexed.get(key)
                if first is not None:
                    found[first] = _LogFile(path, first, compressed, st.st_size, st.st_mtime_ns)
                    continue
                first = _first_seq(path)
            except (RecordError, OSError, EOFError) as exc:
                raise IndexMismatch(
                    f"{path.name} does not start with a valid audit record ({exc}); run "
                    "`jupyterhub-smart audit verify` on the log"
                ) from None
            if first is None:
                continue
            if first in found:
                # A rotated file and its compressed copy side by side: equal content is
                # checked when read; the plain one is read (no decompression).
                other = found[first]
                if other.compressed and not path.name.endswith(".gz"):
                    found[first] = _describe(path, first)
                continue
            found[first] = _describe(path, first)
        return [found[k] for k in sorted(found)]

    def _update(self, files: list[_LogFile]) -> int:
        known = {
            row[0]: row
            for row in self.db.execute(
                "SELECT first_seq, name, compressed, stat_size, stat_mtime, covered, last_seq, "
                "last_offset FROM files"
            )
        }
        head_seq, head_hash = self.head
        on_disk = {f.first_seq for f in files}
        gone = sorted(set(known) - on_disk)
        if gone:
            self._drop_retired(gone, files, known)
            known = {k: v for k, v in known.items() if k not in gone}
        if not known and files:
            if files[0].first_seq != 1 and head_seq == 0:
                head_hash = ""  # see below: an index started after retention
            workers = self._parallel(files)
            if workers > 1:
                return self._build_parallel(files, head_hash, workers)
        added = 0
        for position, lf in enumerate(files):
            row = known.get(lf.first_seq)
            if row is None:
                if known and lf.first_seq != head_seq + 1:
                    if lf.first_seq <= head_seq:
                        raise IndexMismatch(
                            f"{lf.path.name} starts at seq {lf.first_seq}, inside what the "
                            f"index holds from another file: the log was rewritten, or the "
                            "index is not this log's"
                        )
                    raise IndexMismatch(
                        f"seq {head_seq + 1} to {lf.first_seq - 1} missing: no file holds "
                        f"them (a rotated file deleted?); run `jupyterhub-smart audit verify`"
                    )
                if not known and position == 0 and lf.first_seq != 1 and head_seq == 0:
                    # An index started after retention removed the oldest files: the
                    # chain is checked from the first retained record on.
                    head_hash = ""
                head_seq, head_hash, n = self._index_file(
                    lf, 0, lf.first_seq, head_hash, new_file=True
                )
                added += n
                continue
            _, name, compressed, stat_size, stat_mtime, covered, last_seq, last_offset = row
            same = (
                name == lf.path.name
                and bool(compressed) == lf.compressed
                and stat_size == lf.stat_size
                and stat_mtime == lf.stat_mtime
            )
            if same:
                continue
            if (
                not lf.compressed
                and not compressed
                and (stat_size, stat_mtime) == (lf.stat_size, lf.stat_mtime)
            ):
                # Renamed by rotation, unchanged otherwise.
                self.db.execute(
                    "UPDATE files SET name = ? WHERE first_seq = ?", (lf.path.name, lf.first_seq)
                )
                continue
            if not lf.compressed and not compressed and lf.stat_size > covered:
                # Appended to (the live file) or renamed by rotation: check the indexed
                # tail is still there, then read on from it.
                self._check_tail(lf, last_seq, last_offset, covered)
                tail_hash = self._hash_of(last_seq)
                head_seq, head_hash, n = self._index_file(
                    lf, covered, last_seq + 1, tail_hash.hex(), new_file=False
                )
                added += n
                continue
            # Compressed since, or changed in a way an append does not explain: every
            # line must still be the one indexed.
            if self._reverify_file(lf, last_seq):
                row = self.db.execute(
                    "SELECT covered FROM files WHERE first_seq = ?", (lf.first_seq,)
                ).fetchone()
                head_seq, head_hash, n = self._index_file(
                    lf, int(row[0]), last_seq + 1, self._hash_of(last_seq).hex(), new_file=False
                )
                added += n
            else:
                head_seq, head_hash = self.head
        return added

    def _parallel(self, files: list[_LogFile]) -> int:
        """How many processes build a fresh index over ``files`` (1: this one alone)."""
        if len(files) < 2:
            return 1
        if self.workers is not None:
            return self.workers
        if sum(f.stat_size for f in files) < _PARALLEL_MIN_BYTES:
            return 1
        return os.cpu_count() or 1

    def _drop_retired(
        self, gone: list[int], files: list[_LogFile], known: Mapping[int, Any]
    ) -> None:
        """Files that are no longer there: only the oldest may go (retention)."""
        remaining = [f.first_seq for f in files]
        if remaining and max(gone) > remaining[0]:
            missing = [g for g in gone if g > remaining[0]]
            name = known[missing[0]][1]
            raise IndexMismatch(
                f"{name} (from seq {missing[0]}) was indexed but is no longer beside the log, "
                "and later files are: a rotated file was deleted out of order; run "
                "`jupyterhub-smart audit verify`"
            )
        if not remaining:
            raise IndexMismatch("none of the indexed log files are there any more")
        cutoff = remaining[0]
        self.db.execute("DELETE FROM events WHERE seq < ?", (cutoff,))
        self.db.execute("DELETE FROM event_patients WHERE seq < ?", (cutoff,))
        self.db.executemany("DELETE FROM files WHERE first_seq = ?", [(g,) for g in gone])

    def _hash_of(self, seq: int) -> bytes:
        row = self.db.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise IndexMismatch(
                f"the index has no row for seq {seq}, which it names as a file's last "
                "record: the index was edited; delete it to rebuild it from the log"
            )
        return bytes(row[0])

    def _check_tail(self, lf: _LogFile, last_seq: int, last_offset: int, covered: int) -> None:
        expected = self._hash_of(last_seq)
        with lf.path.open("rb") as handle:
            handle.seek(last_offset)
            line = handle.read(covered - last_offset)
        if not line.endswith(b"\n") or hashlib.sha256(line[:-1]).digest() != expected:
            raise IndexMismatch(
                f"seq {last_seq} in {lf.path.name} is no longer the line that was indexed: "
                "the log was edited after indexing (or the index was); run "
                "`jupyterhub-smart audit verify`"
            )

    def _lines(self, handle: IO[bytes], offset: int) -> Iterator[tuple[int, bytes]]:
        """(offset, line without newline) of each complete line; a torn tail is left."""
        pos = offset
        carry = b""
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                return
            data = carry + chunk if carry else chunk
            parts = data.split(b"\n")
            carry = parts.pop()
            if len(carry) > MAX_LINE_BYTES:
                raise IndexMismatch(
                    f"a line longer than {MAX_LINE_BYTES:,} bytes after offset {pos}: not an "
                    "audit record; run `jupyterhub-smart audit verify`"
                )
            for line in parts:
                yield pos, line
                pos += len(line) + 1

    def _index_file(
        self, lf: _LogFile, offset: int, expected: int, prev: str, *, new_file: bool
    ) -> tuple[int, str, int]:
        """Index ``lf`` from ``offset``; returns the new head (seq, hash) and rows added.

        ``prev`` empty: the first record's ``prev`` is taken as it is (an index
        that starts after retention removed the oldest files).
        """
        state = _Scanned(log_id=self.log_id)
        with _open_bytes(lf.path) as handle:
            if offset:
                handle.seek(offset)
            _scan(
                handle,
                lf.path.name,
                lf.first_seq,
                offset,
                expected,
                prev,
                state,
                _Store(self.db),
                adopt=lambda log_id: self._set_meta("log_id", log_id),
            )
        return self._finish_file(lf, state, new_file=new_file)

    def _finish_file(
        self, lf: _LogFile, state: _Scanned, *, new_file: bool
    ) -> tuple[int, str, int]:
        """Record what indexing ``lf`` covered (files row, head); the new head and rows added."""
        new_head = state.head_seq
        if state.any_line or new_file:
            self.db.execute(
                "INSERT OR REPLACE INTO files (first_seq, name, compressed, stat_size, stat_mtime,"
                " covered, last_seq, last_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lf.first_seq,
                    lf.path.name,
                    int(lf.compressed),
                    lf.stat_size,
                    lf.stat_mtime,
                    state.covered,
                    new_head,
                    state.last_offset,
                ),
            )
        else:
            self.db.execute(
                "UPDATE files SET name = ?, stat_size = ?, stat_mtime = ? WHERE first_seq = ?",
                (lf.path.name, lf.stat_size, lf.stat_mtime, lf.first_seq),
            )
        old_head = int(self._meta("head_seq") or 0)
        added = max(0, new_head - old_head)
        if new_head > old_head:
            self._set_meta("head_seq", str(new_head))
            self._set_meta("head_hash", state.head_hash)
        return new_head, state.head_hash, added

    def _build_parallel(self, files: list[_LogFile], head_hash: str, workers: int) -> int:
        """A fresh index over ``files``, read by ``workers`` processes; rows added.

        The files are cut into at most :data:`_MAX_PARTS` runs of consecutive
        files. A worker reads a run exactly as :meth:`_index_file` does (the same
        :func:`_scan`, so the same checks and the same columns) into a
        throw-away SQLite file, except that it cannot know the ``prev`` and
        ``log_id`` the run's first line must carry: it reports them, and this
        process checks them against the end of the run before, in log order,
        before it raises any error the worker met later in the run. So the first
        error reported is the one a sequential build reports. The rows are then
        copied in by SQLite itself (``INSERT ... SELECT`` from the attached file).
        """
        runs = _runs(files, min(_MAX_PARTS, len(files)))
        work = Path(
            tempfile.mkdtemp(prefix=self.index_path.name + ".build-", dir=self.index_path.parent)
        )
        single = threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if single else "spawn")
        log_id = self.log_id
        added = 0
        try:
            self.workers_used = min(workers, len(runs))
            with ProcessPoolExecutor(self.workers_used, mp_context=ctx) as pool:
                futures = [
                    pool.submit(
                        _scan_run,
                        [(str(f.path), f.first_seq) for f in run],
                        str(work / f"part-{i}.sqlite"),
                    )
                    for i, run in enumerate(runs)
                ]
                try:
                    for i, (run, future) in enumerate(zip(runs, futures, strict=True)):
                        states, error = future.result()
                        first = states[0]
                        if not first.first_checked:
                            assert error is not None
                            raise error
                        if first.first_prev != head_hash and head_hash != "":
                            raise IndexMismatch(_prev_broken(run[0].first_seq, run[0].path.name, 0))
                        if not log_id:
                            log_id = first.first_log
                            self._set_meta("log_id", log_id)
                        elif first.first_log != log_id:
                            raise IndexMismatch(
                                _other_log(run[0].first_seq, first.first_log, log_id)
                            )
                        if error is not None:
                            raise error
                        if (
                            states[-1].log_id != log_id
                        ):  # adopted later in the run (an empty log_id)
                            log_id = states[-1].log_id
                            self._set_meta("log_id", log_id)
                        name = f"part{i}"
                        self.db.execute(
                            "ATTACH DATABASE ? AS " + name, (str(work / f"part-{i}.sqlite"),)
                        )
                        self._attached.append(name)
                        self.db.execute(
                            f"INSERT INTO main.events ({_COLUMNS}) SELECT {_COLUMNS} FROM {name}.events"  # noqa: S608
                        )
                        self.db.execute(
                            "INSERT OR REPLACE INTO main.event_patients (patient, seq) "  # noqa: S608
                            f"SELECT patient, seq FROM {name}.event_patients"
                        )
                        for lf, state in zip(run, states, strict=True):
                            _, head_hash, n = self._finish_file(lf, state, new_file=True)
                            added += n
                finally:
                    for future in futures:
                        future.cancel()
        finally:
            self._cleanup = work
        return added

    def _detach(self) -> None:
        """Detach the workers' files (only possible outside a transaction) and delete them."""
        while self._attached:
            name = self._attached.pop()
            with contextlib.suppress(sqlite3.Error):
                self.db.execute(f"DETACH DATABASE {name}")
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def _reverify_file(self, lf: _LogFile, last_seq: int) -> bool:
        """Read a changed (e.g. newly compressed) file in full against the indexed hashes.

        True when the file holds lines past the indexed ones (to be indexed next).
        """
        stored = self.db.execute(
            "SELECT seq, hash FROM events WHERE file_seq = ? ORDER BY seq", (lf.first_seq,)
        )
        expected = iter(stored.fetchall())
        sha256 = hashlib.sha256
        covered = 0
        last_offset = 0
        seen = lf.first_seq - 1
        more = False
        with _open_bytes(lf.path) as handle:
            for pos, line in self._lines(handle, 0):
                item = next(expected, None)
                if item is None:
                    more = True  # written after the last update
                    break
                seq, digest = item
                if sha256(line).digest() != bytes(digest):
                    raise IndexMismatch(
                        f"seq {seq} in {lf.path.name} differs from the line that was indexed: "
                        "the log was edited after indexing (or the index was); run "
                        "`jupyterhub-smart audit verify`"
                    )
                seen = seq
                last_offset = pos
                covered = pos + len(line) + 1
        if seen != last_seq or next(expected, None) is not None:
            raise IndexMismatch(
                f"{lf.path.name} holds seq {lf.first_seq} to {seen}, the index recorded "
                f"{lf.first_seq} to {last_seq} for it: lines were removed or added; run "
                "`jupyterhub-smart audit verify`"
            )
        self.db.execute(
            "UPDATE files SET name = ?, compressed = ?, stat_size = ?, stat_mtime = ?, "
            "covered = ?, last_offset = ? WHERE first_seq = ?",
            (
                lf.path.name,
                int(lf.compressed),
                lf.stat_size,
                lf.stat_mtime,
                covered,
                last_offset,
                lf.first_seq,
            ),
        )
        return more

    # ------------------------------------------------------------- reading back
    def lines(self, seqs: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """Each ``seq``'s line, read from the log and checked against the indexed hash."""
        wanted = sorted(set(seqs))
        by_file: dict[int, list[tuple[int, int, int, bytes]]] = {}
        for chunk_start in range(0, len(wanted), 500):
            chunk = wanted[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for seq, file_seq, offset, length, digest in self.db.execute(
                f"SELECT seq, file_seq, offset, length, hash FROM events WHERE seq IN ({marks})",  # noqa: S608
                chunk,
            ):
                by_file.setdefault(file_seq, []).append((seq, offset, length, bytes(digest)))
        names = dict(self.db.execute("SELECT first_seq, name FROM files").fetchall())
        # Ask the kernel for every line first: read one by one, lines spread over a log
        # larger than the page cache each wait for the disk in turn (a user's thousands
        # of lines across all files); asked for at once, the disk fetches them together.
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            for file_seq in sorted(by_file):
                if names[file_seq].endswith(".gz"):
                    continue
                fd = os.open(self.log_path.with_name(names[file_seq]), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    for _seq, offset, length, _digest in by_file[file_seq]:
                        advise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)
        for file_seq in sorted(by_file):
            path = self.log_path.with_name(names[file_seq])
            items = sorted(by_file[file_seq])
            with _open_bytes(path) as handle:
                # A plain file: one pread a line (a buffered seek and read costs more).
                plain = None if path.name.endswith(".gz") else handle.fileno()
                for seq, offset, length, digest in items:
                    if plain is None:
                        handle.seek(offset)
                        line = handle.read(length)
                    else:
                        line = os.pread(plain, length, offset)
                    if hashlib.sha256(line).digest() != digest:
                        raise IndexMismatch(
                            f"seq {seq} in {path.name} is not the line that was indexed: the "
                            "log or the index was edited; run `jupyterhub-smart audit verify`"
                        )
                    yield seq, line
