"""SQLite storage of the sandbox's FHIR resources.

One table holds every resource as its JSON bytes plus the columns that search
needs (compartment patient, date range); a second holds token/string index
entries (``code``, ``category``, ``identifier``, name parts ...). Serving a
search page is then one indexed query and a concatenation of stored bytes: no
resource is parsed or re-serialised on the hot path.

The database is built once per ``(patients, seed, dense)`` into a temporary
file and moved into place atomically, so a crash during generation never
leaves a half-built store that a restart would trust. Each thread gets its own
connection (waitress serves from several threads; SQLite connections must not
be shared), in WAL mode so readers never block on the rare writer (AuditEvent
creates).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from . import synthetic

log = logging.getLogger(__name__)

#: Bump when the schema or the generator's output changes: stores built by an
#: older version are then regenerated instead of served with stale layout.
SCHEMA_VERSION = "3"
_BATCH = 20_000
#: Upper bound for LIMIT/OFFSET values (far above any store, far below 2**63).
_MAX_ROWS = 2**40

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE resources (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    patient TEXT,
    date_start INTEGER,
    date_end INTEGER,
    json BLOB NOT NULL,
    -- Unix seconds of meta.lastUpdated (the generated data's is synthetic.LAST_UPDATED)
    last_updated INTEGER NOT NULL DEFAULT 1751328000
);
-- Every version the server wrote (see .versions); generated resources enter on their first change.
CREATE TABLE history (
    hseq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    patient TEXT,
    method TEXT NOT NULL,  -- POST, PUT, PATCH or DELETE (json is then the deleted version)
    last_updated INTEGER NOT NULL,
    json BLOB NOT NULL
);
CREATE TABLE tokens (
    seq INTEGER NOT NULL,
    param TEXT NOT NULL,
    system TEXT NOT NULL,  -- '' when the value has no system
    value TEXT NOT NULL,
    PRIMARY KEY (seq, param, value, system)
) WITHOUT ROWID;
"""
_INDEXES = """
CREATE UNIQUE INDEX ix_resources_type_id ON resources (type, id);
CREATE INDEX ix_resources_type_seq ON resources (type, seq);
CREATE INDEX ix_resources_type_patient ON resources (type, patient, seq);
CREATE INDEX ix_resources_type_patient_date ON resources (type, patient, date_start, seq);
CREATE INDEX ix_resources_type_date ON resources (type, date_start, seq);
CREATE INDEX ix_tokens_param_value ON tokens (param, value, seq);
CREATE INDEX ix_resources_patient_seq ON resources (patient, seq);
CREATE INDEX ix_resources_type_updated ON resources (type, last_updated, seq);
CREATE UNIQUE INDEX ix_history_type_id ON history (type, id, version);
CREATE INDEX ix_history_type_hseq ON history (type, hseq);
"""


@dataclass(frozen=True)
class StoredResource:
    """A resource as stored: raw JSON bytes and the columns authorization needs."""

    seq: int
    resource_type: str
    id: str
    patient: str | None
    date_start: int | None
    json: bytes


class FHIRStore:
    """Thread-safe access to the sandbox's FHIR database at ``db_path``."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- connections ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -32000")
            conn.execute("PRAGMA mmap_size = 268435456")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection (at shutdown, or before regenerating)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # -- generation ----------------------------------------------------------

    def generation_parameters(self) -> dict[str, str] | None:
        """What the current database was generated with, or ``None`` if there is none."""
        if not self.db_path.exists():
            return None
        try:
            rows = self._connect().execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as exc:
            log.warning("FHIR store %s is unreadable (%s); it will be rebuilt", self.db_path, exc)
            self.close()
            return None
        return dict(rows)

    def ensure_generated(
        self, patients: int, seed: int, dense_patient_observations: int = 0
    ) -> None:
        """Generate the synthetic data set unless the database already holds this one.

        A restart with the same parameters reuses the data (and the AuditEvents
        created since); other parameters rebuild it, which the log says.
        """
        wanted = {
            "schema": SCHEMA_VERSION,
            "patients": str(patients),
            "seed": str(seed),
            "dense": str(dense_patient_observations),
        }
        current = self.generation_parameters()
        if current is not None and all(current.get(k) == v for k, v in wanted.items()):
            log.info("FHIR store: reusing %s (%d patients, seed %d)", self.db_path, patients, seed)
            return
        if current is not None:
            log.info(
                "FHIR store: %s was generated with %s; regenerating for %s "
                "(resources created since are discarded)",
                self.db_path,
                {k: current.get(k) for k in wanted},
                wanted,
            )
        self.close()
        counts = build_database(
            self.db_path, synthetic.generate(patients, seed, dense_patient_observations), wanted
        )
        log.info(
            "FHIR store: generated %s",
            ", ".join(f"{n} {t}" for t, n in sorted(counts.items())),
        )

    # -- reads ---------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The resource as a dict, or ``None`` if there is no such resource."""
        stored = self.read_stored(resource_type, resource_id)
        return None if stored is None else orjson.loads(stored.json)

    def read_stored(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """The stored row (raw JSON bytes and compartment) of one resource."""
        row = (
            self._connect()
            .execute(
                "SELECT seq, type, id, patient, date_start, json FROM resources "
                "WHERE type = ? AND id = ?",
                (resource_type, resource_id),
            )
            .fetchone()
        )
        return None if row is None else StoredResource(*row)

    def list_patients(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Patients in generation order (for the EHR simulator's list and pickers).

        Generation order puts ``patient-00001`` first and the benchmark patient
        ``dense`` last, so "the first patient" is an ordinary one.
        """
        return self._list("Patient", limit, offset)

    def list_practitioners(self) -> list[dict[str, Any]]:
        """Every Practitioner, in generation order; the first is the sandbox's default user."""
        return self._list("Practitioner", 1000, 0)

    def _list(self, resource_type: str, limit: int, offset: int) -> list[dict[str, Any]]:
        rows = (
            self._connect()
            .execute(
                "SELECT json FROM resources WHERE type = ? ORDER BY seq LIMIT ? OFFSET ?",
                # Clamped: SQLite integers are 64-bit, and callers pass user input.
                (resource_type, min(max(0, limit), _MAX_ROWS), min(max(0, offset), _MAX_ROWS)),
            )
            .fetchall()
        )
        return [orjson.loads(r[0]) for r in rows]

    def query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Run a read-only query built by :mod:`.search` (parameters always bound)."""
        return self._connect().execute(sql, params).fetchall()

    def stream(self, sql: str, params: Sequence[object]) -> Iterator[tuple[Any, ...]]:
        """Rows of a read-only query one at a time (for exports larger than memory)."""
        yield from self._connect().execute(sql, params)

    def counts(self) -> dict[str, int]:
        """Resources per type (for logs and benchmarks)."""
        rows = self._connect().execute("SELECT type, COUNT(*) FROM resources GROUP BY type")
        return dict(rows.fetchall())

    # -- writes --------------------------------------------------------------

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside ``BEGIN IMMEDIATE``: committed on success, else rolled back.

        IMMEDIATE takes SQLite's write lock at once, so two writers never both
        read version N and both write N+1 (the If-Match check is then exact).
        """
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def create(self, resource: dict[str, Any], *, patient: str | None = None) -> tuple[str, bytes]:
        """Store a new resource under a server-assigned id; returns ``(id, json)``.

        Any ``id`` or ``meta`` the client sent is replaced: ids are the server's.
        The resource is not indexed for search beyond its type, id and patient
        (AuditEvents, searched by ``_id`` only).
        """
        resource_id = str(uuid.uuid4())
        now = time.time()
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
        resource = {**resource, "id": resource_id, "meta": {"versionId": "1", "lastUpdated": stamp}}
        body = orjson.dumps(resource)
        with self.write_transaction() as conn:
            conn.execute(
                "INSERT INTO resources (type, id, patient, date_start, date_end, json, last_updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (resource["resourceType"], resource_id, patient, int(now), None, body, int(now)),
            )
            conn.execute(
                "INSERT INTO history (type, id, version, patient, method, last_updated, json) "
                "VALUES (?, ?, 1, ?, 'POST', ?, ?)",
                (resource["resourceType"], resource_id, patient, int(now), body),
            )
        return resource_id, body


def build_database(
    target: Path, rows: Iterable[synthetic.Row], meta: dict[str, str]
) -> dict[str, int]:
    """Write ``rows`` into a fresh database and move it to ``target`` atomically.

    The build runs without a journal (the temporary file is discarded on any
    failure), inserts in large batches inside one transaction, and creates the
    indexes only after the load: the fastest order for SQLite.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".building")
    for path in (tmp, Path(f"{tmp}-journal")):
        path.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -200000")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        seq = 0
        iterator: Iterator[synthetic.Row] = iter(rows)
        while batch := list(islice(iterator, _BATCH)):
            resource_rows = []
            token_rows: list[tuple[int, str, str | None, str]] = []
            for row in batch:
                seq += 1
                resource_rows.append(
                    (
                        seq,
                        row.resource_type,
                        row.id,
                        row.patient,
                        row.date_start,
                        row.date_end,
                        row.json,
                    )
                )
                token_rows.extend((seq, p, s or "", v) for p, s, v in row.tokens)
                counts[row.resource_type] = counts.get(row.resource_type, 0) + 1
            conn.executemany(
                "INSERT INTO resources (seq, type, id, patient, date_start, date_end, json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                resource_rows,
            )
            conn.executemany("INSERT INTO tokens VALUES (?, ?, ?, ?)", token_rows)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        conn.execute("COMMIT")
        conn.executescript(_INDEXES)
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode = WAL")
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, target)
    return counts
