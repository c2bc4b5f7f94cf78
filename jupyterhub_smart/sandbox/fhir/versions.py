"""Versioned writes: every create, update, patch and delete is a new version in ``history``.

The ``resources`` table holds the current version of each live resource (what
search and read serve); ``history`` holds every version the server wrote. A
generated resource has no history row until its first change: that change
first copies it in as version 1, so ``_history`` of a resource is complete
from then on without storing the whole synthetic data set twice.

Functions here take a connection inside :meth:`.store.FHIRStore.write_transaction`,
so that a transaction Bundle is all of its writes or none.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from .indexing import Indexed

#: ``last_updated`` of generated resources (synthetic.LAST_UPDATED in Unix seconds).
GENERATED_AT = 1751328000


@dataclass(frozen=True)
class Current:
    """The live version of a resource."""

    seq: int
    version: int
    patient: str | None
    last_updated: int
    json: bytes


def instant(ts: float) -> str:
    """FHIR instant (UTC, milliseconds) of Unix seconds."""
    text = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def etag(version: int) -> str:
    return f'W/"{version}"'


def current(conn: sqlite3.Connection, resource_type: str, resource_id: str) -> Current | None:
    row = conn.execute(
        "SELECT seq, patient, last_updated, json FROM resources WHERE type = ? AND id = ?",
        (resource_type, resource_id),
    ).fetchone()
    if row is None:
        return None
    meta = orjson.loads(row[3]).get("meta") or {}
    try:
        version = int(meta.get("versionId", "1"))
    except (TypeError, ValueError):
        version = 1
    return Current(row[0], version, row[1], row[2], row[3])


def deleted_version(
    conn: sqlite3.Connection, resource_type: str, resource_id: str
) -> tuple[int, str | None, bytes] | None:
    """``(version, patient, json)`` of a resource's deletion, if its last version is one."""
    row = conn.execute(
        "SELECT version, patient, method, json FROM history WHERE type = ? AND id = ? "
        "ORDER BY version DESC LIMIT 1",
        (resource_type, resource_id),
    ).fetchone()
    if row is None or row[2] != "DELETE":
        return None
    return row[0], row[1], row[3]


def _keep_original(conn: sqlite3.Connection, resource_type: str, found: Current) -> None:
    """Copy a generated resource into ``history`` as its version 1 before its first change."""
    resource_id = orjson.loads(found.json)["id"]
    conn.execute(
        "INSERT OR IGNORE INTO history (type, id, version, patient, method, last_updated, json) "
        "VALUES (?, ?, ?, ?, 'POST', ?, ?)",
        (resource_type, resource_id, found.version, found.patient, found.last_updated, found.json),
    )


def _store_tokens(conn: sqlite3.Connection, seq: int, indexed: Indexed) -> None:
    conn.execute("DELETE FROM tokens WHERE seq = ?", (seq,))
    conn.executemany(
        "INSERT OR IGNORE INTO tokens (seq, param, system, value) VALUES (?, ?, ?, ?)",
        [(seq, p, s, v) for p, s, v in indexed.tokens],
    )


def write(
    conn: sqlite3.Connection,
    resource: dict[str, Any],
    indexed: Indexed,
    method: str,
    existing: Current | None = None,
    new_id: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Store ``resource`` as a new resource (``existing`` None) or the next version of one.

    A new resource gets ``new_id`` (a transaction assigns its ids before it
    writes, to rewrite ``urn:uuid:`` references) or a fresh UUID. Returns the
    stored resource (with the server's ``id`` and ``meta``) and its bytes.
    """
    resource_type = resource["resourceType"]
    now = time.time()
    version = 1 if existing is None else existing.version + 1
    if existing is None:
        resource_id = new_id or str(uuid.uuid4())
    else:
        resource_id = orjson.loads(existing.json)["id"]
    meta = dict(resource.get("meta") or {}) if isinstance(resource.get("meta"), dict) else {}
    meta.update(versionId=str(version), lastUpdated=instant(now))
    stored = {"resourceType": resource_type, "id": resource_id, "meta": meta}
    stored.update({k: v for k, v in resource.items() if k not in stored})
    body = orjson.dumps(stored)
    if existing is None:
        cursor = conn.execute(
            "INSERT INTO resources (type, id, patient, date_start, date_end, json, last_updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                resource_type,
                resource_id,
                indexed.patient,
                indexed.date_start,
                indexed.date_end,
                body,
                int(now),
            ),
        )
        seq = int(cursor.lastrowid or 0)
    else:
        _keep_original(conn, resource_type, existing)
        seq = existing.seq
        conn.execute(
            "UPDATE resources SET patient = ?, date_start = ?, date_end = ?, json = ?, "
            "last_updated = ? WHERE seq = ?",
            (indexed.patient, indexed.date_start, indexed.date_end, body, int(now), seq),
        )
    _store_tokens(conn, seq, indexed)
    conn.execute(
        "INSERT INTO history (type, id, version, patient, method, last_updated, json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (resource_type, resource_id, version, indexed.patient, method, int(now), body),
    )
    return stored, body


def delete(conn: sqlite3.Connection, resource_type: str, existing: Current) -> int:
    """Remove a live resource; its history gains a DELETE version. Returns that version."""
    _keep_original(conn, resource_type, existing)
    resource_id = orjson.loads(existing.json)["id"]
    version = existing.version + 1
    conn.execute("DELETE FROM tokens WHERE seq = ?", (existing.seq,))
    conn.execute("DELETE FROM resources WHERE seq = ?", (existing.seq,))
    conn.execute(
        "INSERT INTO history (type, id, version, patient, method, last_updated, json) "
        "VALUES (?, ?, ?, ?, 'DELETE', ?, ?)",
        (resource_type, resource_id, version, existing.patient, int(time.time()), existing.json),
    )
    return version
