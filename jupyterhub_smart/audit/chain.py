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


def _hash_member(claimed: str) -> bytes | None:
    """The bytes ``"hash":"<claimed>",`` when ``claimed`` serialises without escapes."""
    if len(claimed) != 64 or not claimed.isascii() or not claimed.isalnum():
        return None
    return b'"hash":"' + claimed.encode() + b'",'


def body_bytes(line: bytes, claimed: str) -> bytes | None:
    """``canonical(record without hash)`` cut out of a canonical ``line``, or None.

    ``line`` must already be known to equal ``canonical(record)`` and
    ``claimed`` to be ``record["hash"]``. Then the line is ``{`` + the members
    in sorted key order joined by ``,`` + ``}``, each member serialised on its
    own, and ``hash`` is never the last key (``log_id``, ``prev``, ``seq`` and
    ``time`` sort after it), so the top-level member appears as exactly
    ``"hash":"<claimed>",``; removing it leaves the canonical body. Inside a
    JSON string every ``"`` is escaped, so those bytes can only be an object's
    ``hash`` key with that value: when they occur once, that occurrence is the
    top-level member. Otherwise (a nested ``hash`` with the same value, or a
    value that would need escaping) the caller serialises the body instead.
    """
    member = _hash_member(claimed)
    if member is None or line.count(member) != 1:
        return None
    return line.replace(member, b"", 1)


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
    canonical_line = canonical(record) == line
    # A canonical line holds the canonical body: cut it out rather than serialise again.
    body = body_bytes(line, claimed) if canonical_line else None
    if body is None:
        body = canonical({k: v for k, v in record.items() if k != "hash"})
    if sha256_hex(body) != claimed:
        raise RecordError("hash does not match the record's content (edited or corrupted)")
    if not canonical_line:
        raise RecordError("line is not in canonical form (edited after writing)")
    return record
