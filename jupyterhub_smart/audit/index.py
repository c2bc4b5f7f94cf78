"""A DuckDB index over the audit log, built incrementally and checked against the chain.

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

Speed: the lines are read in blocks of up to 64 MB and each block's
per-line work (hashing, parsing, the filter columns) is done in bulk by
:mod:`.fastrows` (numpy, pyarrow's JSON reader, DuckDB), and the rows go to
the DuckDB table as one Arrow table. A block the bulk reader cannot take (a
record of an unexpected shape, a broken link) is read line by line here, which
finds and names the exact ``seq``. DuckDB rather than SQLite: inserting rows one
by one from Python was most of the cost.

Rotated files compressed with gzip (``<name>.<12 digits>.gz``) are read
transparently. What the index cannot show on its own is what ``audit verify``
cannot either: lines cut off the end of the log (see docs/audit.md).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from . import fastrows
from .chain import GENESIS, RecordError, parse_line
from .events import ACTION_SYSTEM, ISSUER_SYSTEM, SERVER_SYSTEM

__all__ = [
    "SCHEMA_VERSION",
    "AuditIndex",
    "IndexMismatch",
    "IndexRow",
    "default_index_path",
    "log_files",
    "patients_of",
    "row_of",
]

SCHEMA_VERSION = "3"
#: Bytes read from a log file at a time while indexing (one bulk block).
_CHUNK = 64 * 1024 * 1024
#: Rows handed to DuckDB per insert on the line-by-line path.
_BATCH = 20_000
_ROTATED_NAME = re.compile(r"\.(\d{12})(\.gz)?$")
#: Longest line accepted (as in :mod:`.verify`): anything longer is not an audit record.
MAX_LINE_BYTES = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    first_seq BIGINT PRIMARY KEY,
    name VARCHAR NOT NULL,
    compressed INTEGER NOT NULL,
    stat_size BIGINT NOT NULL,
    stat_mtime BIGINT NOT NULL,
    covered BIGINT NOT NULL,      -- bytes of (uncompressed) content indexed
    last_seq BIGINT NOT NULL,
    last_offset BIGINT NOT NULL   -- where the last indexed line starts
);
-- No primary key or secondary indexes: rows arrive in seq order, so DuckDB's
-- per-row-group min/max prunes seq lookups, and a filter scans compressed columns.
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT NOT NULL,
    file_seq BIGINT NOT NULL,
    "offset" BIGINT NOT NULL,
    length BIGINT NOT NULL,
    hash BLOB NOT NULL,
    time VARCHAR NOT NULL,
    action VARCHAR,
    outcome VARCHAR,
    user VARCHAR,
    fhir_user VARCHAR,
    address VARCHAR,
    patient VARCHAR,
    issuer VARCHAR,
    server VARCHAR,
    resource_type VARCHAR,
    interaction VARCHAR,
    count BIGINT
);
-- Patients of records that name more than one (a FHIR proxy search across patients):
-- events.patient holds one of them, this table every one.
CREATE TABLE IF NOT EXISTS event_patients (
    patient VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (patient, seq)
);
"""
_COLUMNS = (
    'seq, file_seq, "offset", length, hash, time, action, outcome, user, fhir_user, address, '
    "patient, issuer, server, resource_type, interaction, count"
)
_ARROW_NAMES = [c.strip().strip('"') for c in _COLUMNS.split(",")]
#: Where a record's line is, and its hash (what :meth:`AuditIndex.read_located` takes).
LOCATION = 'seq, file_seq, "offset", length, hash'
#: Secondary indexes, made after a first build's bulk insert (faster than maintaining them
#: row by row) and kept up to date by DuckDB afterwards: one patient or user is then a
#: lookup instead of a scan.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_patient ON events (patient)",
    "CREATE INDEX IF NOT EXISTS events_user ON events (user)",
    "CREATE INDEX IF NOT EXISTS events_fhir_user ON events (fhir_user)",
)


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
    """``<log>.index.duckdb`` beside the log, or in the user's cache when that is read-only."""
    live = Path(log_path).absolute()
    beside = live.with_name(live.name + ".index.duckdb")
    if os.access(live.parent, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(live).encode()).hexdigest()[:16]
    return cache / "jupyterhub-smart" / f"audit-index-{digest}.duckdb"


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


def _connect(path: Path, busy_timeout: float) -> duckdb.DuckDBPyConnection:
    """Open (or create) the index, waiting out another process that has it open.

    It names patients, like the log: the owner alone may read it.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        con.execute("SET enable_progress_bar = false").fetchall()
        return con


def _unusable(path: Path, exc: Exception) -> IndexMismatch:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return IndexMismatch(
        f"the index {path} cannot be used ({first}): delete it (it is rebuilt "
        "from the log), or choose another with --index"
    )


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


_EVENT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("file_seq", pa.int64()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("hash", pa.binary()),
        *((name, pa.string()) for name in fastrows.ROW_COLUMNS[:-1]),
        ("count", pa.int64()),
    ]
)
_INT64 = range(-(2**63), 2**63)


def _rows_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    return pa.Table.from_pylist(
        [dict(zip(_EVENT_SCHEMA.names, row, strict=True)) for row in rows], schema=_EVENT_SCHEMA
    )


def _storable(row: tuple[Any, ...], seq: int, name: str) -> tuple[Any, ...]:
    """row_of's columns as the table holds them: text, and a count that fits 64 bits.

    A number or boolean where text belongs is kept as its JSON text (as SQLite's
    text columns kept it before); an object or list there is not an audit record.
    """
    *values, count = row
    texts: list[str | None] = []
    for value in values:
        if value is None or isinstance(value, str):
            texts.append(value)
        elif isinstance(value, (int, float)):
            texts.append(orjson.dumps(value).decode())
        else:
            raise IndexMismatch(
                f"seq {seq}: a field holds an object or list where text belongs ({name}); run "
                "`jupyterhub-smart audit verify`"
            )
    if texts[0] is None:
        raise IndexMismatch(f"seq {seq}: a record without time ({name})")
    if count is not None and count not in _INT64:
        count = None
    return (*texts, count)


@dataclass
class _Walk:
    """Where indexing a file has got to: the next seq, the last hash, the last line."""

    log_id: str
    expected: int
    prev_hex: str
    lf: _LogFile
    last_line: bytes = b""
    last_offset: int = 0
    covered: int = 0


class AuditIndex:
    """The index of one audit log. ``update()`` brings it up to date; queries use ``db``.

    Use as a context manager, or call :meth:`close`. One process opens the
    index at a time (DuckDB's file lock); another waits for up to
    ``busy_timeout`` seconds.
    """

    def __init__(
        self,
        log_path: str | os.PathLike[str],
        index_path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout: float = 60.0,
    ) -> None:
        self.log_path = Path(log_path).absolute()
        self.index_path = Path(index_path) if index_path else default_index_path(self.log_path)
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = _connect(self.index_path, busy_timeout)
        except duckdb.Error as exc:
            raise _unusable(self.index_path, exc) from None
        try:
            self._q(_SCHEMA)
            version = self._meta("version")
            if version is None:
                self._set_meta("version", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise IndexMismatch(
                    f"the index {self.index_path} has format {version}, this version reads "
                    f"{SCHEMA_VERSION}: delete it (it is rebuilt from the log)"
                )
        except duckdb.Error as exc:
            self.db.close()
            raise _unusable(self.index_path, exc) from None
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
    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement and fetch all it returns (DuckDB wants each result consumed)."""
        return self.db.execute(sql, params).fetchall()

    def _meta(self, key: str) -> str | None:
        row = (self._q("SELECT value FROM meta WHERE key = ?", (key,)) or [None])[0]
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._q("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

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
        row = (self._q("SELECT MIN(first_seq) FROM files") or [None])[0]
        return int(row[0]) if row and row[0] is not None else 0

    # ---------------------------------------------------------------- update
    def update(self) -> int:
        """Check the index against the log and index what is new; the number of new records.

        Raises :class:`IndexMismatch` when the log no longer matches what was
        indexed, :class:`FileNotFoundError` when the log is not there.
        """
        files = self._discover()
        try:
            self._q("BEGIN TRANSACTION")
            try:
                added = self._update(files)
            except BaseException:
                self._q("ROLLBACK")
                raise
            self._q("COMMIT")
            for statement in _INDEXES:
                self._q(statement)
        except duckdb.Error as exc:
            raise _unusable(self.index_path, exc) from None
        return added

    def _discover(self) -> list[_LogFile]:
        found: dict[int, _LogFile] = {}
        for path in log_files(self.log_path):
            try:
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
            for row in self._q(
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
                self._q(
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
                row = self._q("SELECT covered FROM files WHERE first_seq = ?", (lf.first_seq,))[0]
                head_seq, head_hash, n = self._index_file(
                    lf, int(row[0]), last_seq + 1, self._hash_of(last_seq).hex(), new_file=False
                )
                added += n
            else:
                head_seq, head_hash = self.head
        return added

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
        self._q("DELETE FROM events WHERE seq < ?", (cutoff,))
        self._q("DELETE FROM event_patients WHERE seq < ?", (cutoff,))
        for g in gone:
            self._q("DELETE FROM files WHERE first_seq = ?", (g,))

    def _hash_of(self, seq: int) -> bytes:
        row = (self._q("SELECT hash FROM events WHERE seq = ?", (seq,)) or [None])[0]
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

    def _blocks(self, handle: IO[bytes], offset: int) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of runs of complete lines, up to ``_CHUNK`` each; a torn tail is left."""
        pos = offset
        carry = b""
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                return
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if len(carry) > MAX_LINE_BYTES:
                raise IndexMismatch(
                    f"a line longer than {MAX_LINE_BYTES:,} bytes after offset {pos + cut}: not "
                    "an audit record; run `jupyterhub-smart audit verify`"
                )
            if cut:
                yield pos, data[:cut]
                pos += cut

    def _index_file(
        self, lf: _LogFile, offset: int, expected: int, prev: str, *, new_file: bool
    ) -> tuple[int, str, int]:
        """Index ``lf`` from ``offset``; returns the new head (seq, hash) and rows added.

        ``prev`` empty: the first record's ``prev`` is taken as it is (an index
        that starts after retention removed the oldest files).
        """
        state = _Walk(self.log_id, expected, prev, lf)
        with _open_bytes(lf.path) as handle:
            if offset:
                handle.seek(offset)
            for pos, block in self._blocks(handle, offset):
                try:
                    self._bulk(block, pos, state)
                except fastrows.BlockError:
                    self._line_by_line(block, pos, state)
        if state.log_id and not self.log_id:
            self._set_meta("log_id", state.log_id)
        expected, prev_hex = state.expected, state.prev_hex
        last_line, last_offset, covered = state.last_line, state.last_offset, state.covered
        if not last_line:
            covered = offset
        if last_line:
            try:
                parse_line(last_line)  # the last line is covered by no later prev: self-check
            except RecordError as exc:
                raise IndexMismatch(
                    f"seq {expected - 1}: {exc} ({lf.path.name}); run "
                    "`jupyterhub-smart audit verify`"
                ) from None
        new_head = expected - 1
        if last_line or new_file:
            self._q(
                "INSERT OR REPLACE INTO files (first_seq, name, compressed, stat_size, stat_mtime,"
                " covered, last_seq, last_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lf.first_seq,
                    lf.path.name,
                    int(lf.compressed),
                    lf.stat_size,
                    lf.stat_mtime,
                    covered,
                    new_head,
                    last_offset if last_line else offset,
                ),
            )
        else:
            self._q(
                "UPDATE files SET name = ?, stat_size = ?, stat_mtime = ? WHERE first_seq = ?",
                (lf.path.name, lf.stat_size, lf.stat_mtime, lf.first_seq),
            )
        old_head = int(self._meta("head_seq") or 0)
        added = max(0, new_head - old_head)
        if new_head > old_head:
            self._set_meta("head_seq", str(new_head))
            self._set_meta("head_hash", prev_hex)
        return new_head, prev_hex, added

    def _bulk(self, block: bytes, pos: int, state: _Walk) -> None:
        """Index a block through :mod:`.fastrows`; BlockError when it must go line by line."""
        found = fastrows.extract(block, self.db)
        n = len(found.starts)
        if n == 0:
            return
        if int(found.lengths.max()) > MAX_LINE_BYTES or int(found.lengths.min()) == 0:
            raise fastrows.BlockError("a line of unexpected length")
        cols = found.columns
        seq = cols.column("seq")
        if seq.null_count or cols.column("log_id").null_count or cols.column("time").null_count:
            raise fastrows.BlockError("a record without seq, log_id or time")
        seqs = seq.to_numpy()
        if not (seqs == np.arange(state.expected, state.expected + n, dtype=np.int64)).all():
            raise fastrows.BlockError("seq out of order")
        log_ids = cols.column("log_id").unique().to_pylist()
        if len(log_ids) != 1 or (state.log_id and log_ids[0] != state.log_id):
            raise fastrows.BlockError("another log's record")
        skip_first = state.prev_hex == "" and state.expected == state.lf.first_seq
        before = "" if skip_first else state.prev_hex
        if before == "" and not skip_first:
            raise fastrows.BlockError("no hash to link the first record to")
        if fastrows.prev_links_hold(cols.column("prev"), found.digests, before) is not None:
            raise fastrows.BlockError("a broken link")
        odd = found.odd
        named: list[tuple[str, int]] = []
        for i in found.several_patients:
            start = int(found.starts[i])
            record = orjson.loads(block[start : start + int(found.lengths[i])])
            named += [(p, state.expected + i) for p in patients_of(record)]
        fixed: dict[int, tuple[Any, ...]] = {}
        for i in odd:  # shapes the bulk rules leave to row_of itself
            start = int(found.starts[i])
            line = block[start : start + int(found.lengths[i])]
            fixed[i] = self._row_of_line(line, state.expected + i, pos + start, state)
        table = pa.table(
            {
                "seq": seq,
                "file_seq": pa.array(np.full(n, state.lf.first_seq, dtype=np.int64)),
                "offset": pa.array(found.starts + pos),
                "length": pa.array(found.lengths),
                "hash": pa.array(found.digests, pa.binary()),
                **fastrows.rows(found),
            }
        )
        self._insert(table)
        self._insert_patients(named)
        for i, row in fixed.items():
            self._q(
                "UPDATE events SET time = ?, action = ?, outcome = ?, user = ?, fhir_user = ?, "
                "address = ?, patient = ?, issuer = ?, server = ?, resource_type = ?, "
                "interaction = ?, count = ? WHERE seq = ?",
                (*row, state.expected + i),
            )
        last = n - 1
        start = int(found.starts[last])
        state.log_id = log_ids[0]
        state.expected += n
        state.prev_hex = found.digests[last].hex()
        state.last_line = block[start : start + int(found.lengths[last])]
        state.last_offset = pos + start
        state.covered = pos + len(block)

    def _insert(self, table: pa.Table) -> None:
        self.db.register("new_rows", table)
        try:
            names = ", ".join(f'"{c}"' for c in _ARROW_NAMES)
            self._q(f"INSERT INTO events ({_COLUMNS}) SELECT {names} FROM new_rows")  # noqa: S608
        finally:
            self.db.unregister("new_rows")

    def _row_of_line(self, line: bytes, seq: int, pos: int, state: _Walk) -> tuple[Any, ...]:
        """row_of of one line, in the form the table stores; IndexMismatch if it has none."""
        try:
            row = row_of(orjson.loads(line))
        except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError):
            raise IndexMismatch(
                f"seq {seq}: not an audit record ({state.lf.path.name}, offset {pos}); "
                "run `jupyterhub-smart audit verify`"
            ) from None
        return _storable(row, seq, state.lf.path.name)

    def _line_by_line(self, block: bytes, pos: int, state: _Walk) -> None:
        """Index a block one line at a time: slower, and names the exact seq on any fault."""
        sha256 = hashlib.sha256
        loads = orjson.loads
        rows: list[tuple[Any, ...]] = []
        patient_rows: list[tuple[str, int]] = []
        name = state.lf.path.name
        for line in block[:-1].split(b"\n"):
            expected = state.expected
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
            if line_prev != state.prev_hex and not (
                state.prev_hex == "" and expected == state.lf.first_seq
            ):  # (the first retained record has nothing before it to check against)
                raise IndexMismatch(
                    f"seq {seq}: prev does not match the line before it ({name}"
                    f", offset {pos}): the log was edited; run "
                    "`jupyterhub-smart audit verify`"
                )
            if not state.log_id:
                state.log_id = line_log
            elif line_log != state.log_id:
                raise IndexMismatch(
                    f"seq {seq}: the line belongs to another log (log_id {line_log}, the "
                    f"index is of {state.log_id}); use another --index, or delete this one"
                )
            if len(line) > MAX_LINE_BYTES:
                raise IndexMismatch(
                    f"seq {seq}: a line longer than {MAX_LINE_BYTES:,} bytes ({name}, offset "
                    f"{pos}): not an audit record; run `jupyterhub-smart audit verify`"
                )
            try:
                row = row_of(record)
            except (TypeError, AttributeError):
                raise IndexMismatch(
                    f"seq {seq}: not an audit record ({name}, offset {pos}); "
                    "run `jupyterhub-smart audit verify`"
                ) from None
            digest = sha256(line).digest()
            state.prev_hex = digest.hex()
            rows.append(
                (seq, state.lf.first_seq, pos, len(line), digest, *_storable(row, seq, name))
            )
            state.expected = seq + 1
            state.last_line, state.last_offset = line, pos
            pos += len(line) + 1
            state.covered = pos
            if len(rows) >= _BATCH:
                self._insert(_rows_table(rows))
                rows.clear()
        if rows:
            self._insert(_rows_table(rows))
        self._insert_patients(patient_rows)

    def _insert_patients(self, rows: list[tuple[str, int]]) -> None:
        """Rows of event_patients: each patient of a record that names several."""
        if rows:
            table = pa.table(
                {
                    "patient": pa.array([p for p, _ in rows], pa.string()),
                    "seq": pa.array([s for _, s in rows], pa.int64()),
                }
            )
            self.db.register("new_patients", table)
            try:
                self._q(
                    "INSERT OR REPLACE INTO event_patients (patient, seq) "
                    "SELECT patient, seq FROM new_patients"
                )
            finally:
                self.db.unregister("new_patients")

    def _reverify_file(self, lf: _LogFile, last_seq: int) -> bool:
        """Read a changed (e.g. newly compressed) file in full against the indexed hashes.

        True when the file holds lines past the indexed ones (to be indexed next).
        """
        stored = self._q(
            "SELECT seq, hash FROM events WHERE file_seq = ? ORDER BY seq", (lf.first_seq,)
        )
        expected = iter(stored)
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
        self._q(
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
        found: list[tuple[int, int, int, int, bytes]] = []
        for chunk_start in range(0, len(wanted), 500):
            chunk = wanted[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            found += self._q(
                f"SELECT {LOCATION} FROM events WHERE seq IN ({marks})",  # noqa: S608
                chunk,
            )
        return self.read_located(found)

    def read_located(
        self, rows: Iterable[tuple[int, int, int, int, bytes]]
    ) -> Iterator[tuple[int, bytes]]:
        """The lines at ``rows`` (the :data:`LOCATION` columns), each checked against its hash."""
        by_file: dict[int, list[tuple[int, int, int, bytes]]] = {}
        for seq, file_seq, offset, length, digest in rows:
            by_file.setdefault(file_seq, []).append((seq, offset, length, bytes(digest)))
        names = dict(self._q("SELECT first_seq, name FROM files"))
        for file_seq in sorted(by_file):
            path = self.log_path.with_name(names[file_seq])
            items = sorted(by_file[file_seq])
            with _open_bytes(path) as handle:
                for seq, offset, length, digest in items:
                    handle.seek(offset)
                    line = handle.read(length)
                    if hashlib.sha256(line).digest() != digest:
                        raise IndexMismatch(
                            f"seq {seq} in {path.name} is not the line that was indexed: the "
                            "log or the index was edited; run `jupyterhub-smart audit verify`"
                        )
                    yield seq, line
