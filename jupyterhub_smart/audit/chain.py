"""How one audit record becomes one line, and how lines chain together.

This module is the single definition of the on-disk format, shared by the
writer (:mod:`.log`) and the verifier (:mod:`.verify`), so the two can never
disagree about what a valid line is.

A record is a JSON object. Besides the event's own fields it carries:

``log_id``
    32 hex digits chosen at random when the log is created, repeated in every
    record, so that a file from another log cannot be spliced in unnoticed.
``seq``
    1, 2, 3 ... across all files of one log, without gaps.
``time``
    When the event was submitted, UTC, ISO 8601 with microseconds.
``prev``
    Hex SHA-256 of the previous line's bytes (without its newline); 64 zeros
    for ``seq`` 1. This is the chain: editing, deleting or reordering a line
    breaks the ``prev`` of the line after it.
``hash``
    Hex SHA-256 of the canonical serialisation of the record *without* the
    ``hash`` key. It makes each line self-checking, so a torn or edited last
    line (which no later ``prev`` covers) is detected too.

The canonical serialisation is orjson with sorted keys and no whitespace; a
line is exactly ``canonical(record including hash)``. The verifier re-serialises
every parsed line and requires identical bytes, so even an edit that keeps the
JSON meaning (spacing, key order, escapes) is caught.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

#: ``prev`` of the first record of a log.
GENESIS = "0" * 64

#: Keys the log itself puts in every record; an event may not set them.
CHAIN_KEYS: frozenset[str] = frozenset({"log_id", "seq", "time", "prev", "hash"})


class RecordError(ValueError):
    """A line is not a well-formed, self-consistent audit record."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The one byte serialisation used for hashing and for the line itself."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal(fields: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Add ``hash`` to a record and return it with its line bytes (no newline)."""
    if "hash" in fields:
        raise RecordError("record already has a hash")
    record = dict(fields)
    record["hash"] = sha256_hex(canonical(record))
    return record, canonical(record)


def parse_line(line: bytes) -> dict[str, Any]:
    """Parse one line (without newline) and check it against its own ``hash``.

    Raises :class:`RecordError` saying what is wrong; it never echoes the
    line's content, which may name patients.
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    missing = sorted(CHAIN_KEYS - record.keys())
    if missing:
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    seq = record["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise RecordError("seq is not a positive integer")
    for key in ("log_id", "time", "prev", "hash"):
        if not isinstance(record[key], str):
            raise RecordError(f"{key} is not a string")
    claimed = record["hash"]
    body = {k: v for k, v in record.items() if k != "hash"}
    if sha256_hex(canonical(body)) != claimed:
        raise RecordError("hash does not match the record's content (edited or corrupted)")
    if canonical(record) != line:
        raise RecordError("line is not in canonical form (edited after writing)")
    return record
