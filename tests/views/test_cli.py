"""``jupyterhub-smart view run`` / ``view check``, run as the real command in a subprocess."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from jupyterhub_smart.views import warnings_of

COMMAND = [sys.executable, "-m", "jupyterhub_smart", "view"]

PATIENTS = [
    {"resourceType": "Patient", "id": f"p{i}", "active": i % 2 == 0, "name": [{"family": f"F{i}", "given": ["A", "B"]}]}
    for i in range(25)
]  # fmt: skip
VIEW = {
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "given", "path": "name.given", "type": "string", "collection": True},
            ]
        }
    ],
}


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, timeout=120, check=False
    )


def ndjson(resources: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    view = tmp_path / "view.json"
    view.write_bytes(orjson.dumps(VIEW))
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Patient.000.ndjson").write_bytes(ndjson(PATIENTS[:10]))
    with gzip.open(folder / "Patient.001.ndjson.gz", "wb") as f:
        f.write(ndjson(PATIENTS[10:]))
    (folder / "notes.txt").write_text("not read")
    return {"view": view, "folder": folder, "plain": folder / "Patient.000.ndjson"}


def test_run_folder_of_plain_and_gzip_files_to_parquet_in_small_batches(files, tmp_path):
    out = tmp_path / "out.parquet"
    done = cli(
        "run", str(files["view"]), str(files["folder"]), "--out", str(out), "--batch-rows", "4"
    )
    assert done.returncode == 0, done.stderr
    assert b"25 rows from 25 lines of 2 input(s)" in done.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "active", "given"]
    assert str(table.schema.field("given").type).startswith("list<")
    assert sorted(table.column("id").to_pylist()) == sorted(p["id"] for p in PATIENTS)
    assert table.to_pylist()[0] == {"id": "p0", "active": True, "given": ["A", "B"]}


def test_run_stdin_to_csv_and_ndjson(files, tmp_path):
    data = files["plain"].read_bytes()
    csv_out = tmp_path / "out.csv"
    assert cli("run", str(files["view"]), "-", "--out", str(csv_out), stdin=data).returncode == 0
    table = pacsv.read_csv(csv_out)
    assert table.num_rows == 10
    assert table.column("given").to_pylist()[0] == '["A","B"]'
    nd_out = tmp_path / "out.ndjson"
    assert cli("run", str(files["view"]), "-", "--out", str(nd_out), stdin=data).returncode == 0
    rows = [orjson.loads(line) for line in nd_out.read_bytes().splitlines()]
    assert rows[1] == {"id": "p1", "active": False, "given": ["A", "B"]}


def test_builtin_view_by_name_and_empty_output_keeps_columns(files, tmp_path):
    out = tmp_path / "obs.parquet"
    done = cli("run", "Observation", str(files["plain"]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.column_names[:4] == ["id", "subject", "encounter", "effective"]


def test_bad_lines_and_wrong_types_are_counted_not_fatal(files, tmp_path):
    source = tmp_path / "mixed.ndjson"
    deep = b'{"resourceType":"Patient","id":"deep","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    source.write_bytes(
        ndjson(PATIENTS[:2])
        + b"{not json\n"
        + b"[1, 2]\n"
        + deep
        + b"\n"
        + ndjson([{"resourceType": "Patient", "id": "odd", "active": "yes"}])
    )
    out = tmp_path / "out.parquet"
    done = cli("run", str(files["view"]), str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert b"3 line(s) skipped" in done.stderr
    assert b"mixed.ndjson:3: not JSON" in done.stderr
    assert b"active: 1" in done.stderr
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["p0", "p1", "odd"]
    assert table.column("active").to_pylist() == [True, False, None]
    assert warnings_of(table) == {"active": 1}


def test_fifty_megabyte_resource(files, tmp_path):
    big = {"resourceType": "Patient", "id": "big", "name": [{"given": ["x" * 1000] * 50_000}]}
    source = tmp_path / "big.ndjson"
    source.write_bytes(ndjson([big]))
    assert source.stat().st_size > 50_000_000
    out = tmp_path / "out.ndjson"
    done = cli("run", str(files["view"]), str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    row = orjson.loads(out.read_bytes())
    assert row["id"] == "big" and len(row["given"]) == 50_000


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ["run", "{view}", "{tmp}/missing.ndjson", "--out", "{tmp}/o.parquet"],
            1,
            b"no such file or folder",
        ),
        (
            ["run", "{view}", "{tmp}", "--out", "{tmp}/o.parquet"],
            1,
            b"no .ndjson or .ndjson.gz files",
        ),
        (["run", "{view}", "{plain}", "--out", "{tmp}/o.xlsx"], 2, b"unknown output format"),
        (["run", "{bad}", "{plain}", "--out", "{tmp}/o.parquet"], 2, b"select[0].column[0].path"),
        (["run", "NoSuchView", "{plain}", "--out", "{tmp}/o.parquet"], 2, b"not a built-in view"),
        (["check", "{bad}"], 2, b"unknown function frob()"),
        (["check", "{notjson}"], 2, b"not valid JSON"),
        (
            ["run", "{view}", "{plain}", "--out", "{tmp}/o.csv", "--batch-rows", "0"],
            2,
            b"'0' must be at least 1",
        ),
    ],
)
def test_errors_exit_non_zero_with_a_message(files, tmp_path, args, status, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.json"
    bad.write_bytes(
        orjson.dumps(
            {"resource": "Patient", "select": [{"column": [{"name": "x", "path": "id.frob()"}]}]}
        )
    )
    notjson = tmp_path / "notjson.json"
    notjson.write_text("{")
    names = {
        "view": files["view"],
        "tmp": empty,
        "plain": files["plain"],
        "bad": bad,
        "notjson": notjson,
    }
    done = cli(*(a.format(**names) for a in args))
    assert done.returncode == status, done.stderr
    assert message in done.stderr


def test_view_error_during_a_run_exits_1_naming_the_column(files, tmp_path):
    view = tmp_path / "multi.json"
    view.write_bytes(
        orjson.dumps(
            {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]}
        )
    )
    done = cli("run", str(view), str(files["plain"]), "--out", str(tmp_path / "o.parquet"))
    assert done.returncode == 1
    assert b"select[0].column[0].path" in done.stderr and b"Collection value" in done.stderr


def test_check_lists_columns(files):
    done = cli("check", str(files["view"]))
    assert done.returncode == 0, done.stderr
    assert b"valid view of Patient, 3 columns" in done.stdout
    assert b"given\tstring (collection)" in done.stdout


def test_parallel_jobs_give_the_same_rows_in_the_same_order_and_counts(files, tmp_path):
    source = tmp_path / "mixed.ndjson"
    odd = {"resourceType": "Patient", "id": "odd", "active": "yes"}
    source.write_bytes(ndjson(PATIENTS[:7]) + b"{not json\n" + ndjson([odd, *PATIENTS[7:]]))
    outputs = {}
    for jobs in ("1", "3"):
        out = tmp_path / f"out-{jobs}.parquet"
        done = cli(
            "run",
            str(files["view"]),
            str(source),
            str(files["folder"]),
            "--out",
            str(out),
            "--jobs",
            jobs,
            "--batch-rows",
            "4",
        )
        assert done.returncode == 0, done.stderr
        assert b"51 rows from 52 lines of 3 input(s)" in done.stderr
        assert b"1 line(s) skipped" in done.stderr and b"mixed.ndjson:8: not JSON" in done.stderr
        assert b"active: 1" in done.stderr
        outputs[jobs] = pq.read_table(out).to_pylist()
    assert outputs["3"] == outputs["1"]
    assert [row["id"] for row in outputs["3"][:9]] == [*(f"p{i}" for i in range(7)), "odd", "p7"]


def test_parallel_view_error_exits_1_naming_the_column(files, tmp_path):
    view = tmp_path / "multi.json"
    view.write_bytes(
        orjson.dumps(
            {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]}
        )
    )
    done = cli(
        "run", str(view), str(files["folder"]), "--out", str(tmp_path / "o.parquet"), "--jobs", "2"
    )
    assert done.returncode == 1
    assert b"select[0].column[0].path" in done.stderr and b"Collection value" in done.stderr
