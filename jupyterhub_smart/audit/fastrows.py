"""The index's per-line work done in bulk: split, hash, parse and extract a block of lines.

:func:`.index.row_of` reads a record's filter columns in Python, one parsed
dict at a time, which caps indexing at about 10k lines/s. Here a whole block of
the log (tens of MB) goes through:

1. **numpy** for the line boundaries;
2. **hashlib** for each line's SHA-256 (the one loop left in Python: ~1 us a
   line with the CPU's SHA instructions), and numpy to compare every ``prev``
   with the hash of the line before;
3. **pyarrow.json** to parse the block into typed columns with the schema
   below. The reader is strict: a value of another JSON type than the schema's,
   a key given twice, a line that is not an object all fail the block, which
   the caller then reads line by line the old way (the exact error, with the
   record's ``seq``, comes from there);
4. **DuckDB** to evaluate :func:`.index.row_of`'s rules over those columns as
   list expressions. Where a record is shaped so that the columns cannot tell
   what ``row_of`` would do (a list holding ``null``, a requestor's ``network``
   without an ``address``, a ``count`` that is not plain digits), the row is
   flagged and ``row_of`` itself computes it. ``tests/audit/test_index_fast.py``
   checks the result equal to ``row_of`` on hostile records.

Nothing here decides whether the chain holds: :func:`extract` returns what it
found (seq, prev, log id, hashes) and the caller compares.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from .events import ACTION_SYSTEM, ISSUER_SYSTEM, SERVER_SYSTEM

__all__ = ["Block", "BlockError", "extract"]

_STR = pa.string()
_IDENT = pa.struct([("system", _STR), ("value", _STR)])
#: Only what row_of reads; other keys are skipped by the reader.
SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("prev", _STR),
        ("log_id", _STR),
        ("time", _STR),
        ("outcome", _STR),
        ("subtype", pa.list_(pa.struct([("system", _STR), ("code", _STR)]))),
        (
            "agent",
            pa.list_(
                pa.struct(
                    [
                        ("requestor", pa.bool_()),
                        ("altId", _STR),
                        ("who", pa.struct([("reference", _STR), ("identifier", _IDENT)])),
                        ("network", pa.struct([("address", _STR)])),
                    ]
                )
            ),
        ),
        (
            "entity",
            pa.list_(
                pa.struct(
                    [
                        ("role", pa.struct([("code", _STR)])),
                        ("name", _STR),
                        ("what", pa.struct([("reference", _STR), ("identifier", _IDENT)])),
                        (
                            "detail",
                            pa.list_(pa.struct([("type", _STR), ("valueString", _STR)])),
                        ),
                    ]
                )
            ),
        ),
    ]
)
_PARSE = pa_json.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")
#: Larger than the longest line the index accepts (a line must fit one reader block).
_READ = pa_json.ReadOptions(block_size=4 * 1024 * 1024)

# row_of as list expressions. "Truthy" in row_of is spelled out: a non-empty string,
# a true boolean; ``x IS NOT NULL`` where row_of tests a dict's presence.
_ROLE1 = "coalesce(e.role.code = '1', false)"
_NAMED = f"(NOT {_ROLE1} AND coalesce(e.name, '') <> '')"
# The f-string holds this package's constants only, never input.
_SQL = f"""
WITH t AS (
  SELECT
    row_number() OVER () AS i,
    *,
    list_filter(agent, lambda a: coalesce(a.requestor, false)) AS req,
    list_transform(entity, lambda e, k: CASE WHEN {_ROLE1} THEN k END) AS r_idx,
    flatten(list_transform(list_filter(entity, lambda e: {_NAMED}), lambda e: coalesce(e.detail, [])))
      AS details
  FROM lines
), u AS (
  SELECT *, list_filter(r_idx, lambda k: k IS NOT NULL)[-1] AS r_last FROM t
)
SELECT
  time,
  list_filter(subtype, lambda x: x.system = '{ACTION_SYSTEM}')[1].code AS action,
  outcome,
  req[-1].altId AS user,
  req[-1].who.reference AS fhir_user,
  list_filter(req, lambda a: a.network IS NOT NULL)[-1].network.address AS address,
  CASE
    WHEN r_last IS NOT NULL AND entity[r_last].what.reference IS NOT NULL
      THEN entity[r_last].what.reference
    ELSE list_filter(
      list_transform(entity, lambda e, k: CASE
        WHEN k > coalesce(r_last, 0) AND NOT {_ROLE1} AND e.name = 'Patient'
          AND coalesce(e.what.reference, '') <> '' THEN e.what.reference END),
      lambda x: x IS NOT NULL)[1]
  END AS patient,
  list_filter(entity, lambda e: NOT {_ROLE1} AND e.what.identifier.system = '{ISSUER_SYSTEM}')[-1]
    .what.identifier.value AS issuer,
  list_filter(agent, lambda a: NOT coalesce(a.requestor, false)
    AND a.who.identifier.system = '{SERVER_SYSTEM}')[-1].who.identifier.value AS server,
  list_filter(entity, lambda e: {_NAMED})[-1].name AS resource_type,
  list_filter(details, lambda d: d.type = 'interaction')[-1].valueString AS interaction,
  TRY_CAST(list_filter(details, lambda d: d.type = 'count' AND d.valueString IS NOT NULL)[-1]
    .valueString AS BIGINT) AS count,
  (
    list_contains(list_transform(subtype, lambda x: x IS NULL), true)
    OR list_contains(list_transform(agent, lambda a: a IS NULL), true)
    OR list_contains(list_transform(entity, lambda e: e IS NULL), true)
    OR list_contains(list_transform(entity, lambda e: list_contains(
         list_transform(e.detail, lambda d: d IS NULL), true)), true)
    OR list_contains(list_transform(req, lambda a: a.network IS NOT NULL
         AND a.network.address IS NULL), true)
    OR list_contains(list_transform(details, lambda d: d.type = 'count'
         AND d.valueString IS NOT NULL
         AND NOT regexp_full_match(d.valueString, '[0-9]{{1,18}}')), true)
  ) IS TRUE AS odd,
  len(list_distinct(list_filter(
    list_transform(entity, lambda e: CASE WHEN {_ROLE1} THEN e.what.reference END),
    lambda x: x IS NOT NULL))) > 1 AS several,
  seq,
  prev,
  log_id
FROM u
ORDER BY i
"""  # noqa: S608
#: Columns of the result that are row_of's, in its order.
ROW_COLUMNS = (
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
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i


class BlockError(Exception):
    """The block cannot be read in bulk (the caller reads it line by line instead)."""


@dataclass
class Block:
    """What a block of complete lines holds, one entry per line."""

    starts: np.ndarray  #: offset of each line in the block
    lengths: np.ndarray  #: bytes of each line, without its newline
    digests: list[bytes]  #: SHA-256 of each line
    columns: pa.Table  #: row_of's columns, then ``odd``, ``several``, ``seq``, ``prev``, ``log_id``

    @property
    def odd(self) -> list[int]:
        """Rows whose columns row_of must compute itself."""
        return _true_rows(self.columns.column("odd"))

    @property
    def several_patients(self) -> list[int]:
        """Rows that name more than one patient (see :func:`.index.patients_of`)."""
        return _true_rows(self.columns.column("several"))


def _true_rows(flags: pa.ChunkedArray) -> list[int]:
    return np.flatnonzero(flags.to_numpy(zero_copy_only=False) == True).tolist()  # noqa: E712


def split(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each line of ``block`` (which ends with a newline)."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts, ends - starts


def digests(block: bytes, starts: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    view = memoryview(block)
    sha256 = hashlib.sha256
    return [
        sha256(view[s : s + n]).digest()
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    ]


def prev_links_hold(prev: pa.ChunkedArray, hashes: list[bytes], before: str) -> int | None:
    """Index of the first line whose ``prev`` is not the hash of the line before, or None.

    ``before``: the hex hash of the line before the block ("" skips the first check).
    """
    n = len(hashes)
    if n == 0:
        return None
    arr = prev.combine_chunks()
    if arr.null_count:
        return int(np.flatnonzero(np.asarray(arr.is_null()))[0])
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    if not (np.diff(offsets) == 64).all():
        return int(np.flatnonzero(np.diff(offsets) != 64)[0])
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[0] + 64 * n]
    nibbles = _HEX[data].reshape(n, 64)
    bad = (nibbles == 255).any(axis=1)
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    expected = np.frombuffer(b"".join(hashes[:-1]), dtype=np.uint8).reshape(n - 1, 32)
    wrong = np.zeros(n, dtype=bool)
    wrong[1:] = (packed[1:] != expected).any(axis=1)
    wrong |= bad
    if before:
        wrong[0] = bad[0] or bytes(packed[0]) != bytes.fromhex(before)
    else:
        wrong[0] = bool(bad[0])
    hit = np.flatnonzero(wrong)
    return int(hit[0]) if len(hit) else None


def extract(block: bytes, con: duckdb.DuckDBPyConnection) -> Block:
    """Split, hash, parse and extract ``block`` (complete lines, ending with a newline).

    Raises :class:`BlockError` when the block must be read line by line.
    """
    starts, lengths = split(block)
    hashes = digests(block, starts, lengths)
    try:
        table = pa_json.read_json(pa.BufferReader(block), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BlockError(str(exc)) from None
    if table.num_rows != len(starts):
        raise BlockError("lines and parsed rows differ in number")
    con.register("lines", table)
    try:
        columns = con.sql(_SQL).to_arrow_table()
    except duckdb.Error as exc:
        raise BlockError(str(exc)) from None
    finally:
        con.unregister("lines")
    return Block(starts, lengths, hashes, columns)


def rows(block: Block) -> dict[str, Any]:
    """The row_of columns of ``block`` as a dict of Arrow arrays (for an insert)."""
    return {name: block.columns.column(name) for name in ROW_COLUMNS}
