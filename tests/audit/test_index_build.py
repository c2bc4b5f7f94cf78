"""The index's two build paths against the reference extraction, over a hostile log.

A fresh index over a large log is built by worker processes, each reading a run
of files with a typed msgspec decoder; small logs and updates are read by the
index's own process. Both must give, for every record, exactly what the
reference code (``orjson.loads`` + :func:`row_of` / :func:`patients_of`) gives,
including for records whose shapes the typed decoder refuses (then read by the
reference code itself), and must fail on an edited log with the same message.
The log is written by the real AuditLog, rotated into many files, one of them
compressed as retention does.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event
from jupyterhub_smart.audit.chain import seal
from jupyterhub_smart.audit.index import (
    _INSERT,
    _SCHEMA,
    AuditIndex,
    IndexMismatch,
    log_files,
    patients_of,
    row_of,
)

ISS = "https://ehr.example/fhir"
ACTION = "urn:jupyterhub-smart:audit-action"
SERVER = "urn:jupyterhub-smart:server"
ROLE = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}
LOOKALIKE = '","altId":"mallory","reference":"Patient/evil","code":"1"}],"x":"'


def _odd_events() -> list[dict[str, Any]]:
    """Records whose shapes test every branch of the extraction, several refused by msgspec."""
    requestor = {"requestor": True, "altId": "alice", "who": {"reference": "Practitioner/1"}}
    return [
        # Several patients (a search across patients), one named twice; one not "Patient/...".
        {
            "subtype": [{"system": ACTION, "code": "data-access"}],
            "agent": [requestor],
            "entity": [
                {"role": ROLE, "what": {"reference": "Patient/a"}},
                {"role": ROLE, "what": {"reference": "Patient/b"}},
                {"role": ROLE, "what": {"reference": "Patient/a"}},
                {"role": ROLE, "what": {"reference": "urn:uuid:c"}},
            ],
        },
        # Two patients, only one of them written as Patient/...: both in event_patients.
        {
            "entity": [
                {"role": ROLE, "what": {"reference": "Patient/x"}},
                {"role": ROLE, "what": {"reference": "urn:uuid:y"}},
            ]
        },
        # Strings that look like members, unicode, a long one; a falsy network after a
        # truthy one (the address stays), requestor as a string, ints where codes are.
        {
            "subtype": [{"system": ACTION, "code": 7}, {"system": ACTION, "code": "second"}],
            "agent": [
                {
                    "requestor": "yes",
                    "altId": LOOKALIKE + "\u00e9\u4e2d\U0001f600",
                    "who": {"reference": LOOKALIKE},
                    "network": {"address": "10.9.8.7"},
                },
                {"requestor": 1, "altId": "bob", "network": {}},
                {"requestor": False, "who": {"identifier": {"system": SERVER, "value": "nb/"}}},
                {"requestor": 0, "who": {"identifier": {}}},
            ],
            "entity": [
                {"name": "Patient", "what": {"reference": "Patient/by-name"}},
                {"name": "Observation", "detail": [{"type": "count", "valueString": "x" * 900}]},
                {"name": "Condition", "detail": [{"type": "count", "valueString": 12.75}]},
                {"name": "", "detail": [{"type": "interaction", "valueString": "ignored"}]},
                {"what": {"identifier": {"system": "urn:ietf:rfc:3986", "value": ISS}}},
            ],
        },
        # Shapes msgspec's types refuse but the reference code reads (falsy non-objects).
        {"agent": [{"requestor": True, "altId": "carol", "who": 0, "network": []}]},
        {"entity": [{"role": ROLE, "what": ""}, {"name": "Encounter", "detail": {}}]},
        {"subtype": {}, "agent": [], "entity": None, "outcome": 4},
        {"entity": [{"role": 0, "what": {"identifier": "", "reference": "Patient/z"}}]},
        {"entity": [{"name": "Patient", "what": {"reference": "Patient/n"}, "detail": []}]},
    ]


def _write(path: Path) -> None:
    with AuditLog(path, max_bytes=8 * 1024) as log:
        for i in range(90):
            user, patient = f"doc{i % 4}", f"Patient/p{i % 6}"
            if i % 5 == 0:
                event = hub_event(
                    "login-succeeded",
                    username=user + LOOKALIKE,
                    fhir_user=f"Practitioner/{i % 4}",
                    issuer=ISS,
                    patient=patient,
                    client_address="10.1.2.3",
                )
            else:
                event = data_access_event(
                    interaction="search-type",
                    resource_type="Observation",
                    search_params=["patient"],
                    count=i,
                    status=200,
                    username=user,
                    fhir_user=f"Practitioner/{i % 4}",
                    server_name="",
                    issuer=ISS,
                    patient=patient,
                )
            log.record_sync(event)
            if i % 10 == 3:
                for odd in _odd_events():
                    log.record_sync(odd)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write(path)
    rotated = sorted(p for p in log_files(path) if p != path)
    assert len(rotated) >= 8
    with rotated[1].open("rb") as src, gzip.open(f"{rotated[1]}.gz", "wb") as dst:
        dst.write(src.read())
    rotated[1].unlink()
    return path


def _tables(index_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(index_path)
    try:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608
            for table in ("events", "event_patients", "files", "meta")
        }
    finally:
        db.close()


def _build(log: Path, index_path: Path, workers: int) -> int:
    with AuditIndex(log, index_path, workers=workers) as index:
        return index.update()


def test_both_build_paths_give_the_reference_columns_for_every_record(log: Path) -> None:
    alone, parallel = log.with_name("alone.sqlite"), log.with_name("parallel.sqlite")
    assert _build(log, alone, 1) == _build(log, parallel, 3) == 90 + 9 * len(_odd_events())
    tables = _tables(alone)
    assert _tables(parallel) == tables
    assert not list(log.parent.glob("parallel.sqlite.build-*"))  # the workers' files are gone

    lines: dict[int, bytes] = {}
    for path in log_files(log):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            for line in handle.read().splitlines():
                lines[json.loads(line)["seq"]] = line
    # What the reference code gives, stored as the index stores it (SQLite's column types).
    reference = sqlite3.connect(":memory:")
    reference.executescript(_SCHEMA)
    expected_patients = []
    for seq, file_seq, offset, length, digest, *_ in tables["events"]:
        line = lines[seq]
        record = orjson.loads(line)
        assert (length, bytes(digest)) == (len(line), hashlib.sha256(line).digest())
        reference.execute(_INSERT, (seq, file_seq, offset, length, digest, *row_of(record)))
        named = patients_of(record)
        if len(named) > 1:
            expected_patients += [(p, seq) for p in named]
    assert reference.execute("SELECT * FROM events ORDER BY seq").fetchall() == tables["events"]
    assert sorted(tables["event_patients"]) == sorted(expected_patients)
    assert {p for p, _ in expected_patients} == {
        "Patient/a",
        "Patient/b",
        "urn:uuid:c",
        "Patient/x",
        "urn:uuid:y",
    }


def test_both_build_paths_fail_alike_on_an_edited_log(log: Path) -> None:
    files = sorted((p for p in log_files(log) if p != log and p.suffix != ".gz"), key=str)
    # A line inside a later file edited: its hash no longer matches the next line's prev.
    victim = files[-2]
    data = victim.read_bytes().split(b"\n")
    data[1] = data[1].replace(b"Patient/", b"Patient/X", 1)
    victim.write_bytes(b"\n".join(data))
    # Then, one file at a time, its first line re-sealed with another prev (a rewrite by
    # someone who can compute hashes): a break at a file border, for some of them between
    # two workers' runs, which no worker can see. It is the first break: reported first.
    for border in files[:-2]:
        pristine = border.read_bytes()
        first, rest = pristine.split(b"\n", 1)
        fields = orjson.loads(first)
        del fields["hash"]
        fields["prev"] = "1" * 64
        border.write_bytes(seal(fields)[1] + b"\n" + rest)
        messages = []
        for workers in (1, 2):
            index_path = log.with_name(f"index-{workers}.sqlite")
            with pytest.raises(IndexMismatch) as caught:
                _build(log, index_path, workers)
            messages.append(str(caught.value))
            with AuditIndex(log, index_path, workers=workers) as index:
                assert index.head[0] == 0  # nothing kept of a failed build
        assert messages[0] == messages[1]
        assert messages[0].startswith(f"seq {fields['seq']}: prev does not match"), messages
        assert border.name in messages[0]
        border.write_bytes(pristine)
