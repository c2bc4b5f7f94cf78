"""The index's bulk extraction (audit/fastrows.py) gives what row_of gives, on hostile records.

Records come two ways: through the real writer with hostile strings in every
field a caller controls, and sealed into a valid chain by hand in shapes the
writer never makes (several requestors, a network without address, a Patient
entity after an empty patient role, counts Python's ``int`` reads but plain
digits do not, ``null`` in lists, a value of another JSON type). The index
built from them must hold row_of's columns for every record, whichever path
(bulk, bulk with row_of for flagged rows, or line by line) each block took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event
from jupyterhub_smart.audit.chain import GENESIS, seal, sha256_hex
from jupyterhub_smart.audit.events import ACTION_SYSTEM, ISSUER_SYSTEM, SERVER_SYSTEM
from jupyterhub_smart.audit.fastrows import ROW_COLUMNS, extract
from jupyterhub_smart.audit.index import AuditIndex, IndexMismatch, row_of

HOSTILE = [
    'a"b',
    "back\\slash",
    "line\nbreak",
    "\u0000nul",
    "é\u2028\U0001f600",
    '","altId":"admin',
    "Patient/p1",
    " ",
    "x" * 900,
]


def _writer_events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, text in enumerate(HOSTILE):
        out.append(
            hub_event(
                "login-succeeded",
                username=text,
                fhir_user=f"Practitioner/{text}",
                patient=f"Patient/{text}",
                issuer=f"https://ehr.example/{text}",
                client_address=text,
                user_agent=text,
                description=text,
            )
        )
        out.append(
            data_access_event(
                interaction="search-type",
                resource_type="Observation",
                search_params=["patient"],
                count=i,
                status=200,
                username=text,
                patient=f"Patient/p{i}",
                server_name=text,
            )
        )
    return out


def _requestor(name: Any, **more: Any) -> dict[str, Any]:
    return {"requestor": True, "altId": name, "who": {"reference": f"Practitioner/{name}"}, **more}


def _shaped() -> list[dict[str, Any]]:
    """Well-typed records in shapes the bulk rules must get right or flag."""
    action = {"system": ACTION_SYSTEM, "code": "data-access"}
    server = {"requestor": False, "who": {"identifier": {"system": SERVER_SYSTEM, "value": "s"}}}
    role1 = {"code": "1"}
    issuer = {"what": {"identifier": {"system": ISSUER_SYSTEM, "value": "https://i"}}}

    def data(*details: dict[str, Any], name: str = "Observation") -> dict[str, Any]:
        return {"name": name, "detail": list(details)}

    def count(value: Any) -> dict[str, Any]:
        return {"type": "count", "valueString": value}

    shapes: list[dict[str, Any]] = [
        {"subtype": [{"system": "other", "code": "x"}, action, {**action, "code": "second"}]},
        {"subtype": [{"system": ACTION_SYSTEM}]},
        {"agent": [_requestor("first"), server, _requestor("second")]},
        {"agent": [_requestor("a", network={"address": "10.0.0.1"}), _requestor("b")]},
        {"agent": [_requestor("a", network={"address": "10.0.0.1"}), _requestor("b", network={})]},
        {"agent": [_requestor("a", network={"address": "1"}), _requestor("b", network={"t": "2"})]},
        {"agent": [{"requestor": False, "altId": "not-me"}, server, server]},
        {"entity": [{"role": role1, "what": {"reference": "Patient/a"}}]},
        {
            "entity": [
                {"role": role1, "what": {}},
                {"name": "Patient", "what": {"reference": "P/b"}},
            ]
        },
        {
            "entity": [
                {"name": "Patient", "what": {"reference": "P/c"}},
                {"role": role1, "what": {}},
            ]
        },
        {
            "entity": [
                {"name": "Patient", "what": {"reference": "P/d"}},
                {"role": role1, "what": {"reference": "Patient/e"}},
                {"name": "Patient", "what": {"reference": "P/f"}},
            ]
        },
        {"entity": [{"role": role1, "what": {"reference": "P/g"}}, {"role": role1, "what": {}}]},
        {
            "entity": [
                {"role": role1, "what": {"reference": "Patient/h"}},
                {"role": role1, "what": {"reference": "Patient/i"}},
            ]
        },
        {"entity": [{"name": "Patient", "what": {"reference": ""}}, {"name": "", "detail": []}]},
        {"entity": [{"role": {"code": "1"}, "name": "Patient", "what": {"reference": "P/j"}}]},
        {"entity": [issuer, {**issuer, "name": "Encounter"}, data(count("3"))]},
        {
            "entity": [
                data({"type": "interaction", "valueString": "read"}, count("4")),
                data({"type": "interaction", "valueString": None}, name="Condition"),
            ]
        },
        {"entity": [data(count("007"), count(None))]},
        {"entity": [data(count("5"), count("not a number"))]},
        {"entity": [data(count(" 7 "))]},
        {"entity": [data(count("1_000"))]},
        {"entity": [data(count("\u0663"))]},
        {"entity": [data(count("-5"))]},
        {"entity": [data(count("99999999999999999999"))]},
        {"entity": [data(count("12"), name="")]},
        {"outcome": "4", "agent": [], "entity": [], "subtype": []},
    ]
    return shapes


def _chain(records: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Seal ``records`` into a valid chain at ``path``; returns them as written."""
    prev, out, lines = GENESIS, [], []
    for seq, fields in enumerate(records, 1):
        fields = {**fields, "log_id": "ab" * 16, "seq": seq, "prev": prev}
        fields.setdefault("time", f"2026-01-01T00:00:{seq % 60:02d}.000000+00:00")
        record, line = seal(fields)
        prev = sha256_hex(line)
        out.append(record)
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return out


def _indexed(log: Path) -> list[tuple[Any, ...]]:
    sql = f"SELECT {', '.join(ROW_COLUMNS)} FROM events ORDER BY seq"  # noqa: S608
    with AuditIndex(log, log.with_name("index.duckdb")) as index:
        index.update()
        return [tuple(r) for r in index.db.execute(sql).fetchall()]


def test_bulk_columns_equal_row_of_for_hostile_strings(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for event in _writer_events():
            log.record_sync(event)
    block = path.read_bytes()
    records = [orjson.loads(line) for line in block.splitlines()]
    found = extract(block, duckdb.connect())  # the bulk path itself, no fallback
    assert found.odd == []
    bulk = [tuple(row.values()) for row in found.columns.select(list(ROW_COLUMNS)).to_pylist()]
    assert bulk == [row_of(r) for r in records]
    assert _indexed(path) == [row_of(r) for r in records]


def test_index_equals_row_of_for_every_shape(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = _chain(_shaped(), path)
    found = extract(path.read_bytes(), duckdb.connect())
    assert len(found.odd) >= 8  # the shapes the bulk rules leave to row_of
    expected = []
    for record in records:
        *texts, count = row_of(record)
        expected.append((*texts, count if count is None or abs(count) < 2**63 else None))
    assert _indexed(path) == expected


def test_null_in_a_list_is_not_an_audit_record(tmp_path: Path) -> None:
    """row_of cannot read these (None has no fields); the index names the record."""
    plain = {"agent": [_requestor("plain")]}
    for broken in (
        {"agent": [None, _requestor("after-null")]},
        {"entity": [None]},
        {"entity": [{"name": "Observation", "detail": [None]}]},
        {"subtype": [None]},
    ):
        path = tmp_path / "audit.jsonl"
        _chain([plain, broken, plain], path)
        with pytest.raises(IndexMismatch, match="seq 2: not an audit record"):
            _indexed(path)
        path.with_name("index.duckdb").unlink()


def test_a_value_of_another_type_is_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    shapes = [{"agent": [_requestor("plain")]}, {"outcome": 0}, {"agent": [_requestor("x")]}]
    records = _chain(shapes, path)
    expected = [row_of(r) for r in records]
    expected[1] = (*expected[1][:2], "0", *expected[1][3:])  # a number kept as its text
    assert _indexed(path) == expected
