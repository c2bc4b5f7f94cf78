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
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

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

SCHEMA_VERSION = "2"
#: Bytes read from a log file at a time while indexing.
_CHUNK = 8 * 1024 * 1024
#: Rows handed to SQLite per executemany.
_BATCH = 20_000
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
-- events.patient holds one of them, this table every one.
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
    ) -> None:
        self.log_path = Path(log_path).absolute()
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
                added = self._update(files)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self.db.executescript(_INDEXES)  # after a first build's bulk insert: much faster
        except sqlite3.DatabaseError as exc:
            raise IndexMismatch(
                f"the index {self.index_path} cannot be used ({exc}): delete it (it is rebuilt "
                "from the log), or choose another with --index"
            ) from None
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
        log_id = self.log_id
        sha256 = hashlib.sha256
        loads = orjson.loads
        rows: list[tuple[Any, ...]] = []
        patient_rows: list[tuple[str, int]] = []
        last_line = b""
        last_offset = offset
        covered = offset
        seq = expected - 1
        prev_hex = prev
        insert = _INSERT
        with _open_bytes(lf.path) as handle:
            if offset:
                handle.seek(offset)
            for pos, line in self._lines(handle, offset):
                try:
                    record = loads(line)
                    seq = record["seq"]
                    line_prev = record["prev"]
                    line_log = record["log_id"]
                except (orjson.JSONDecodeError, TypeError, KeyError):
                    raise IndexMismatch(
                        f"seq {expected}: not an audit record ({lf.path.name}, offset {pos}); "
                        "run `jupyterhub-smart audit verify`"
                    ) from None
                if seq != expected:
                    raise IndexMismatch(
                        f"seq {expected}: found seq {seq} instead ({lf.path.name}, offset "
                        f"{pos}): lines deleted, reordered or inserted; run "
                        "`jupyterhub-smart audit verify`"
                    )
                if line_prev != prev_hex:
                    if prev_hex == "" and expected == lf.first_seq:
                        pass  # the first retained record: nothing before it to check against
                    else:
                        raise IndexMismatch(
                            f"seq {seq}: prev does not match the line before it ({lf.path.name}"
                            f", offset {pos}): the log was edited; run "
                            "`jupyterhub-smart audit verify`"
                        )
                if not log_id:
                    log_id = line_log
                    self._set_meta("log_id", log_id)
                elif line_log != log_id:
                    raise IndexMismatch(
                        f"seq {seq}: the line belongs to another log (log_id {line_log}, the "
                        f"index is of {log_id}); use another --index, or delete this one"
                    )
                digest = sha256(line).digest()
                prev_hex = digest.hex()
                rows.append((seq, lf.first_seq, pos, len(line), digest, *row_of(record)))
                if line.count(b'"Patient/') > 1:  # cheap test before looking for several
                    named = patients_of(record)
                    if len(named) > 1:
                        patient_rows += [(p, seq) for p in named]
                expected = seq + 1
                last_line, last_offset = line, pos
                covered = pos + len(line) + 1
                if len(rows) >= _BATCH:
                    self.db.executemany(insert, rows)
                    rows.clear()
                    self._insert_patients(patient_rows)
        if rows:
            self.db.executemany(insert, rows)
        self._insert_patients(patient_rows)
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
            self.db.execute(
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
                    last_offset,
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
            self._set_meta("head_hash", prev_hex)
        return new_head, prev_hex, added

    def _insert_patients(self, rows: list[tuple[str, int]]) -> None:
        if rows:
            self.db.executemany(
                "INSERT OR REPLACE INTO event_patients (patient, seq) VALUES (?, ?)", rows
            )
            rows.clear()

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
