"""``audit query`` and ``audit report`` through the real command line, over a real log.

The log is written by the real AuditLog with a small rotation size, so the
answers span the live file, plain rotated files and a gzip-compressed one. The
index beside it is built once and brought up to date incrementally; edits to
the log or to the index after indexing fail with exit status 1.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event
from jupyterhub_smart.audit.index import AuditIndex, log_files
from jupyterhub_smart.cli import main

ISS = "https://ehr.example/fhir"
HOSTILE = '<script>alert("x")</script>&"\'=HYPERLINK("http://evil")'


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """The real command line, in this process (a subprocess each costs seconds here)."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        try:
            code = main(["audit", *map(str, args)])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def test_the_console_command_answers(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 0, 3)
    result = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "query", str(path), "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [r["seq"] for r in json.loads(result.stdout)] == [1, 2, 3]


def write_events(path: Path, start: int, n: int) -> None:
    """Logins and notebook reads by three users over five patients, through the real writer."""
    with AuditLog(path, max_bytes=16 * 1024) as log:
        for i in range(start, start + n):
            user, patient = f"doc{i % 3}", f"Patient/p{i % 5}"
            if i % 4 == 0:
                event = hub_event(
                    "login-succeeded",
                    username=user,
                    fhir_user=f"Practitioner/{i % 3}",
                    issuer=ISS,
                    patient=patient,
                    client_address="10.1.2.3",
                )
            else:
                event = data_access_event(
                    interaction="search-type",
                    resource_type="Observation",
                    search_params=["patient"],
                    count=i % 7,
                    status=200,
                    username=user,
                    fhir_user=f"Practitioner/{i % 3}",
                    server_name="",
                    issuer=ISS,
                    patient=patient,
                )
            log.record_sync(event)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "audit.jsonl"
    write_events(path, 0, 120)
    rotated = sorted(p for p in log_files(path) if p != path)
    assert len(rotated) >= 3
    oldest = rotated[0]  # compressed as retention does: name.<seq>.gz, the plain one gone
    with oldest.open("rb") as src, gzip.open(f"{oldest}.gz", "wb") as dst:
        dst.write(src.read())
    oldest.unlink()
    yield path


def query(cli: Callable[..., Result], log: Path, *args: str) -> list[dict]:
    result = cli("query", log, "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_filters_select_exactly_the_matching_records_across_live_rotated_and_gz_files(
    log: Path, cli: Callable[..., Result]
) -> None:
    every = query(cli, log)
    assert [r["seq"] for r in every] == list(range(1, 121))
    p2 = query(cli, log, "--patient", "p2")
    assert [r["seq"] for r in p2] == [i + 1 for i in range(120) if i % 5 == 2]
    assert query(cli, log, "--patient", "Patient/p2") == p2
    assert query(cli, log, "--patient", f"{ISS}/Patient/p2") == p2
    doc1_logins = query(cli, log, "--user", "doc1", "--type", "login-succeeded")
    assert [r["seq"] for r in doc1_logins] == [
        i + 1 for i in range(120) if i % 3 == 1 and i % 4 == 0
    ]
    assert query(cli, log, "--user", "Practitioner/1", "--type", "login-succeeded") == doc1_logins
    assert query(cli, log, "--issuer", ISS + "/") == every
    assert query(cli, log, "--issuer", "https://other.example/fhir") == []
    middle = every[60]["time"]
    assert [r["seq"] for r in query(cli, log, "--since", middle)] == list(range(61, 121))
    assert [r["seq"] for r in query(cli, log, "--until", middle)] == list(range(1, 61))
    assert [r["seq"] for r in query(cli, log, "--type", "login-*", "--patient", "p0")] == [
        i + 1 for i in range(120) if i % 4 == 0 and i % 5 == 0
    ]


def test_table_and_csv_formats(log: Path, cli: Callable[..., Result]) -> None:
    table = cli("query", log, "--patient", "p1", "--type", "data-access")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
    assert len(lines) == 1 + sum(1 for i in range(120) if i % 5 == 1 and i % 4)
    assert "search-type Observation" in lines[1]
    out = cli("query", log, "--user", "doc2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [int(r["seq"]) for r in rows] == [i + 1 for i in range(120) if i % 3 == 2]
    assert {r["user"] for r in rows} == {"doc2"}


def test_index_is_incremental_and_follows_rotation(log: Path, cli: Callable[..., Result]) -> None:
    assert len(query(cli, log)) == 120
    index_path = log.with_name(log.name + ".index.sqlite")
    with AuditIndex(log, index_path) as index:
        assert index.head[0] == 120
        assert index.update() == 0  # nothing new: nothing read again
    write_events(log, 120, 60)  # appends, rotates further
    assert [r["seq"] for r in query(cli, log, "--patient", "p3")] == [
        i + 1 for i in range(180) if i % 5 == 3
    ]
    with AuditIndex(log, index_path) as index:
        assert index.head[0] == 180


def _flip(path: Path, seq: int) -> None:
    """Change one character inside record ``seq``'s line, keeping the file's size."""
    data = path.read_bytes().split(b"\n")
    for i, line in enumerate(data):
        if line and json.loads(line)["seq"] == seq:
            data[i] = line.replace(b"doc", b"dog", 1)
    path.write_bytes(b"\n".join(data))


def test_a_log_edited_after_indexing_is_an_error(log: Path, cli: Callable[..., Result]) -> None:
    assert len(query(cli, log)) == 120
    files = sorted(
        (p for p in log_files(log) if not p.name.endswith(".gz") and p != log),
        key=lambda p: p.name,
    )
    victim = files[0]
    first = json.loads(victim.read_bytes().split(b"\n", 1)[0])["seq"]
    stat = victim.stat()
    _flip(victim, first + 1)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and time kept
    result = cli("query", log, "--format", "json")
    assert result.returncode == 1
    assert f"seq {first + 1}" in result.stderr and "edited" in result.stderr
    assert result.stdout == ""  # no partial answer

    _flip(victim, first + 2)  # size kept, time changed: the file is read again
    result = cli("query", log, "--patient", "p9")
    assert result.returncode == 1 and "seq" in result.stderr


def test_a_log_edited_before_indexing_is_an_error(log: Path, cli: Callable[..., Result]) -> None:
    _flip(log, json.loads(log.read_bytes().split(b"\n")[0])["seq"])
    result = cli("query", log)
    assert result.returncode == 1
    assert "prev does not match" in result.stderr or "hash" in result.stderr


def test_an_edited_index_is_an_error(log: Path, cli: Callable[..., Result]) -> None:
    assert len(query(cli, log, "--patient", "p4")) == 24
    index_path = log.with_name(log.name + ".index.sqlite")
    db = sqlite3.connect(index_path)
    db.execute("UPDATE events SET patient = 'Patient/p4' WHERE seq = 2")  # p1's record
    db.commit()
    result = cli("query", log, "--patient", "p4")
    assert result.returncode == 1
    assert "seq 2" in result.stderr and "index" in result.stderr
    db.execute("UPDATE events SET patient = 'Patient/p1', hash = zeroblob(32) WHERE seq = 2")
    db.commit()
    db.close()
    result = cli("query", log, "--patient", "p1")
    assert result.returncode == 1 and "seq 2" in result.stderr


def test_usage_errors(tmp_path: Path, log: Path, cli: Callable[..., Result]) -> None:
    missing = cli("query", tmp_path / "nothing.jsonl")
    assert missing.returncode == 2 and "no such audit log" in missing.stderr
    bad_date = cli("query", log, "--since", "last tuesday")
    assert bad_date.returncode == 2 and "ISO 8601" in bad_date.stderr
    no_patient = cli("report", log)
    assert no_patient.returncode == 2
    not_an_index = tmp_path / "notes.txt"
    not_an_index.write_text("these are not the droids\n" * 100)
    wrong = cli("query", log, "--index", not_an_index)
    assert wrong.returncode == 1 and "cannot be used" in wrong.stderr


def test_report_lists_disclosures_and_escapes_hostile_values(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record_sync(
            hub_event(
                "login-succeeded",
                username=HOSTILE,
                fhir_user="Practitioner/<b>9</b>",
                issuer=ISS,
                patient="Patient/p7",
                client_address="10.0.0.9",
                user_agent=HOSTILE,
            )
        )
        for count, rtype in ((12, "Observation"), (3, "Condition"), (None, "Patient")):
            log.record_sync(
                data_access_event(
                    interaction="search-type",
                    resource_type=rtype,
                    count=count,
                    status=200,
                    username=HOSTILE,
                    fhir_user="Practitioner/<b>9</b>",
                    server_name="analysis",
                    issuer=ISS,
                    patient="Patient/p7",
                )
            )
        log.record_sync(
            data_access_event(
                interaction="read",
                resource_type="Observation",
                status=403,
                username="=cmd|' /C calc'!A0",
                patient="Patient/p7",
            )
        )
        log.record_sync(
            data_access_event(
                interaction="read", resource_type="Observation", status=200, patient="Patient/p8"
            )
        )
    out = tmp_path / "report.html"
    result = cli("report", path, "--patient", "p7", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "3 disclosure(s) of Patient/p7 to 1 user(s)" in result.stderr
    html = out.read_text()
    assert "<script>" not in html and "<b>9</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "Observation (12), Condition (3)" in html
    assert "&lt;/script&gt;&amp;&#34;&#39;=HYPERLINK(&#34;http://evil&#34;)/analysis" in html
    assert "EHR sign-in at" in html and "for Patient/p7" in html
    assert "Patient/p8" not in html

    csv_out = cli("report", path, "--patient", "Patient/p7", "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [(r["resource_type"], r["count"], r["outcome"]) for r in rows] == [
        ("Observation", "12", "success"),
        ("Condition", "3", "success"),
        ("Patient", "", "success"),
        ("Observation", "", "failure"),
    ]
    assert rows[0]["user"] == HOSTILE
    assert rows[3]["user"] == "'=cmd|' /C calc'!A0"  # a formula is shown as text


def test_oldest_files_may_go_a_middle_one_may_not(log: Path, cli: Callable[..., Result]) -> None:
    assert len(query(cli, log)) == 120
    files = sorted((p for p in log_files(log) if p != log), key=lambda p: p.name)
    oldest_gone = int(files[1].name.split(".")[2]) - 1  # last seq of the oldest file
    files[0].unlink()  # retention removed the oldest (compressed) file
    kept = [r["seq"] for r in query(cli, log)]
    assert kept == list(range(oldest_gone + 1, 121))
    with AuditIndex(log) as index:
        assert index.first_seq == oldest_gone + 1
    # A fresh index over the retained files starts at the first retained record.
    assert [r["seq"] for r in query(cli, log, "--index", str(log.parent / "fresh.sqlite"))] == kept
    files[2].unlink()  # a file in the middle: never retention
    result = cli("query", log)
    assert result.returncode == 1 and "deleted out of order" in result.stderr


def test_a_touched_live_file_is_read_again_and_then_followed(
    log: Path, cli: Callable[..., Result]
) -> None:
    assert len(query(cli, log)) == 120
    os.utime(log)  # same bytes, new time: every indexed line is compared again
    assert len(query(cli, log)) == 120
    write_events(log, 120, 2)
    os.utime(log, ns=(0, 0))
    assert [r["seq"] for r in query(cli, log)][-3:] == [120, 121, 122]


_opened: list[str] | None = None


def _note_open(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, os.PathLike)):
        _opened.append(os.fspath(args[0]))


def test_a_query_opens_no_log_file_unchanged_since_it_was_indexed(
    log: Path, cli: Callable[..., Result]
) -> None:
    global _opened
    sys.addaudithook(_note_open)  # Python's own audit events: every file this process opens
    assert len(query(cli, log)) == 120
    files = {str(p) for p in log_files(log)}
    try:
        _opened = []
        assert query(cli, log, "--user", "nobody") == []
        assert not files & set(_opened)
        write_events(log, 120, 1)  # the live file grows: it alone is read
        _opened = []
        assert query(cli, log, "--user", "nobody") == []
        assert files & set(_opened) == {str(log)}
        assert [r["seq"] for r in query(cli, log, "--user", "doc0")][-1] == 121
    finally:
        _opened = None


def test_every_patient_of_a_record_naming_several_is_found_in_any_reference_form(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    path = tmp_path / "audit.jsonl"
    role = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}
    with AuditLog(path) as log:
        log.record_sync(
            {
                "entity": [
                    {"role": role, "what": {"reference": f"{ISS}/Patient/u1"}},
                    {"role": role, "what": {"reference": "urn:uuid:u2"}},
                    {"role": role, "what": {"reference": "Patient/u3"}},
                ]
            }
        )
    write_events(path, 0, 3)
    for ref in (f"{ISS}/Patient/u1", "urn:uuid:u2", "Patient/u3", "u3"):
        assert [r["seq"] for r in query(cli, path, "--patient", ref)] == [1], ref

    # An index of the earlier format (which kept these only when two were written
    # Patient/...) is rebuilt from the log when opened, not trusted.
    index_path = path.with_name(path.name + ".index.sqlite")
    db = sqlite3.connect(index_path)
    db.execute("DELETE FROM event_patients")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
    db.commit()
    db.close()
    assert [r["seq"] for r in query(cli, path, "--patient", "urn:uuid:u2")] == [1]
    db = sqlite3.connect(index_path)
    assert db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("3",)
    db.close()


@pytest.mark.parametrize("version", ["99", "x"])
def test_an_index_of_a_newer_or_unknown_format_is_refused_not_emptied(
    log: Path, cli: Callable[..., Result], version: str
) -> None:
    assert len(query(cli, log)) == 120
    index_path = log.with_name(log.name + ".index.sqlite")
    db = sqlite3.connect(index_path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version,))
    db.commit()
    result = cli("query", log)
    assert result.returncode == 1
    assert f"has format {version}" in result.stderr and "delete it" in result.stderr
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (120,)  # kept as it was
    db.close()
