"""The line format: the body bytes cut out of a line equal the serialised body, on hostile records."""

from __future__ import annotations

from typing import Any

import pytest

from jupyterhub_smart.audit.chain import (
    GENESIS,
    RecordError,
    body_bytes,
    canonical,
    parse_line,
    seal,
    sha256_hex,
)

BASE = {"log_id": "ab" * 16, "seq": 7, "time": "2026-12-02T09:00:00.000000+00:00", "prev": GENESIS}

HOSTILE: list[dict[str, Any]] = [
    {},
    {"note": "Zoë 患者 🩺 \u202e rtl"},
    {"note": 'quote " backslash \\ slash / tab \t nl \n nul \u0000 del \x7f'},
    {"a": {"hash": "0" * 64, "z": [1, {"hash": "x"}]}, "zz": {"hash": '"hash":"'}},
    {"note": '"hash":"' + "f" * 64 + '",'},
    {"Z": 1, "a": 2, "_": 3, "hasg": 4, "hasi": 5, "hash_": 6, "HASH": 7},
    {"nested": {"b": {"c": [None, True, False, 1.5, -0, 10**18, "é"]}}},
    {"hashes": ["hash", "hash:"], "ha": "sh"},
]


@pytest.mark.parametrize("extra", HOSTILE)
def test_cut_body_equals_serialised_body(extra: dict[str, Any]) -> None:
    record, line = seal({**BASE, **extra})
    body = {k: v for k, v in record.items() if k != "hash"}
    assert body_bytes(line, record["hash"]) == canonical(body)
    assert parse_line(line) == record


def test_nested_hash_with_the_same_value_falls_back_to_serialising() -> None:
    # Two occurrences of the member's bytes: the top-level one is not told apart by
    # bytes alone, so the body is serialised instead, and the verdict is the same.
    record, line = seal({**BASE, "a": {}})
    planted = canonical({**record, "a": {"hash": record["hash"], "z": 1}})
    assert body_bytes(planted, record["hash"]) is None
    with pytest.raises(RecordError, match="hash does not match"):
        parse_line(planted)
    assert body_bytes(line, record["hash"]) is not None
    assert parse_line(line) == record


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: {**r, "note": "changed"},
        lambda r: {**r, "seq": r["seq"] + 1},
        lambda r: {**r, "hash": r["hash"].upper()},
        lambda r: {**r, "hash": "a" * 63},
    ],
)
def test_edited_record_is_caught(edit: Any) -> None:
    record, _ = seal({**BASE, "note": "x"})
    with pytest.raises(RecordError, match="hash does not match"):
        parse_line(canonical(edit(record)))


def test_non_canonical_line_is_caught_with_either_reason() -> None:
    _, line = seal({**BASE, "note": "x"})
    spaced = line.replace(b'"note":', b'"note": ')
    with pytest.raises(RecordError, match="not in canonical form"):
        parse_line(spaced)
    reordered = line.replace(b"{", b'{"zz":1,', 1)  # also changes the content
    with pytest.raises(RecordError, match="hash does not match"):
        parse_line(reordered)
    escaped = line.replace(b'"x"', b'"\\u0078"')  # same meaning, other bytes
    with pytest.raises(RecordError, match="not in canonical form"):
        parse_line(escaped)
    assert sha256_hex(line) != sha256_hex(escaped)
