"""The DuckDB engine (``views.sql``) gives what the Python engine gives, or hands the view back.

Each test writes NDJSON, runs both engines on it and compares the Arrow tables
(schema, values, order) and the counted warnings. Where the Python engine
raises a view error, the DuckDB query must stop (the command then reruns the
view on Python), never return rows.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jupyterhub_smart import views
from jupyterhub_smart.sandbox.fhir.synthetic import generate
from jupyterhub_smart.views import builtin
from jupyterhub_smart.views.ndjson import NdjsonReader
from jupyterhub_smart.views.sql import SqlRun, Unsupported, compile_sql

COMMAND = [sys.executable, "-m", "jupyterhub_smart", "view"]


def write(path: Path, resources: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return path


def both(view: dict[str, Any], path: Path) -> tuple[pa.Table | None, pa.Table | None]:
    """(Python engine's table or None if it raised a view error, DuckDB's or None if it stopped)."""
    try:
        expected: pa.Table | None = views.run(view, NdjsonReader([str(path)]))
    except views.ViewEvaluationError:
        expected = None
    run = SqlRun(compile_sql(view), [str(path)], threads=2)
    try:
        got: pa.Table | None = pa.Table.from_batches(list(run.batches(7)), schema=run.schema())
    except duckdb.Error:
        got = None
    return expected, got


def assert_same(view: dict[str, Any], path: Path) -> None:
    expected, got = both(view, path)
    if expected is None:
        assert got is None, "the Python engine raised a view error, DuckDB returned rows"
        return
    if got is None:
        return  # DuckDB handed the data back: the command reruns it on Python
    assert got.schema.equals(expected.schema, check_metadata=False)
    assert got.to_pylist() == expected.to_pylist()
    assert views.warnings_of(got) == views.warnings_of(expected)


@pytest.fixture(scope="module")
def sandbox_ndjson(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sandbox")
    return write(folder / "all.ndjson", [orjson.loads(row.json) for row in generate(12, 5)])


@pytest.mark.parametrize("name", builtin.names())
def test_builtin_view_on_sandbox_data_equals_python(name, sandbox_ndjson):
    expected, got = both(builtin.load(name), sandbox_ndjson)
    assert expected is not None and got is not None
    assert got.to_pylist() == expected.to_pylist()
    assert got.schema.equals(expected.schema, check_metadata=False)
    assert views.warnings_of(got) == views.warnings_of(expected)


#: Values of the wrong shape for any element: scalars where objects are expected, nulls in
#: arrays, numbers where strings are expected, several values where one is expected.
ODD_VALUES = [
    5,
    1.5,
    "text",
    True,
    [],
    [None, {"code": "a"}],
    {"coding": [{"code": 7, "system": "http://x", "display": True}], "text": 3},
    {"coding": [{"code": "a"}, {"code": "b"}], "reference": "Patient/p1"},
    {"reference": 5, "start": 20200101, "end": "2020", "value": "7", "unit": 4},
    [{"reference": "https://h/fhir/Encounter/e1/_history/2"}, {"reference": "Patient/x"}],
]


def _top_keys(view: dict[str, Any]) -> list[str]:
    text = orjson.dumps(view).decode()
    paths = re.findall(r'"(?:path|forEach|forEachOrNull)":"((?:[^"\\]|\\.)*)"', text)
    keys = set()
    for path in paths:
        keys.update(re.findall(r"(?:^|[(|]\s*|%resource\.)([a-z][A-Za-z]*)", path))
    return sorted(keys)


@pytest.mark.parametrize("name", builtin.names())
def test_builtin_view_on_malformed_resources_equals_python_or_hands_back(name, tmp_path):
    view = builtin.load(name)
    for key in _top_keys(view):
        # one file per element: a view error on one value must not hide the other elements
        resources = []
        for i, value in enumerate(ODD_VALUES):
            resources.append({"resourceType": name, "id": f"r{i}", key: value})
            resources.append({"resourceType": name, "id": f"q{i}", key + "Quantity": value})
        assert_same(view, write(tmp_path / f"{key}.ndjson", resources))


SPEC_VIEWS: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    (  # forEach, forEachOrNull, nested select, collection, join
        {
            "resource": "Patient",
            "select": [
                {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]},
                {
                    "forEachOrNull": "address",
                    "column": [
                        {"name": "city", "path": "city", "type": "string"},
                        {"name": "lines", "path": "line", "type": "string", "collection": True},
                        {"name": "joined", "path": "line.join(', ')", "type": "string"},
                    ],
                },
                {
                    "forEach": "name",
                    "select": [{"column": [{"name": "family", "path": "family", "type": "string"}]}],
                },
            ],
        },
        [
            {"resourceType": "Patient", "id": "a", "name": [{"family": "F"}, {"family": "G"}],
             "address": [{"city": "X", "line": ["1", "2"]}, {"line": [None, "3"]}]},
            {"resourceType": "Patient", "id": "b", "name": [{"family": 4}]},
            {"resourceType": "Patient", "id": "c"},
            {"resourceType": "Observation", "id": "o"},
        ],
    ),
    (  # unionAll, where, constants, extension, getReferenceKey, ofType, exists/empty
        {
            "resource": "Observation",
            "constant": [{"name": "sys", "valueUri": "http://loinc.org"}],
            "where": [{"path": "status = 'final' or status = 'amended'"}],
            "select": [
                {
                    "column": [
                        {"name": "id", "path": "getResourceKey()", "type": "id"},
                        {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                        {"name": "ext", "path": "extension('http://e').value.ofType(string).first()", "type": "string"},
                        {"name": "has_note", "path": "note.exists()", "type": "boolean"},
                        {"name": "no_note", "path": "note.empty()", "type": "boolean"},
                    ]
                },
                {
                    "unionAll": [
                        {"column": [
                            {"name": "code", "path": "code.coding.where(system = %sys).code.first()", "type": "code"},
                            {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                        ]},
                        {"forEach": "component", "column": [
                            {"name": "code", "path": "code.coding.first().code", "type": "code"},
                            {"name": "value", "path": "(value.ofType(Quantity).value | value.ofType(integer)).first()", "type": "decimal"},
                        ]},
                    ]
                },
            ],
        },
        [
            {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://x", "code": "no"}, {"system": "http://loinc.org", "code": "1-1"}]},
             "valueQuantity": {"value": 1.25}, "note": [{"text": "n"}],
             "extension": [{"url": "http://e", "valueString": "E"}, {"url": "http://f", "valueString": "F"}],
             "component": [{"code": {"coding": [{"code": "c1"}]}, "valueInteger": 3},
                           {"code": {"coding": [{"code": "c2"}]}, "valueQuantity": {"value": "bad"}}]},
            {"resourceType": "Observation", "id": "o2", "status": "amended", "subject": {"reference": "Group/g"},
             "valueQuantity": {"value": 7}},
            {"resourceType": "Observation", "id": "o3", "status": "preliminary"},
            {"resourceType": "Observation", "id": "o4", "status": "final", "valueQuantity": {"value": True}},
        ],
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(SPEC_VIEWS)))
def test_spec_area_views_equal_python(case, tmp_path):
    view, resources = SPEC_VIEWS[case]
    expected, got = both(view, write(tmp_path / "in.ndjson", resources))
    assert expected is not None and got is not None
    assert got.to_pylist() == expected.to_pylist()
    assert views.warnings_of(got) == views.warnings_of(expected)
    assert expected.num_rows > 0


def test_unsupported_functions_are_refused():
    for path in ("name.count()", "name.given.substring(1)", "%rowIndex", "name.family + 'x'"):
        column = {"name": "a", "path": path, "type": "string"}
        view = {"resource": "Patient", "select": [{"column": [column]}]}
        with pytest.raises(Unsupported):
            compile_sql(view)
    with pytest.raises(Unsupported):  # repeat, and complex-typed columns
        compile_sql({"resource": "Patient", "select": [{"column": [{"name": "n", "path": "name", "type": "HumanName"}]}]})  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_command_with_duckdb_equals_python_on_gzip(tmp_path, sandbox_ndjson):
    gz = tmp_path / "Observation.ndjson.gz"
    gz.write_bytes(gzip.compress(sandbox_ndjson.read_bytes()))
    duck = cli(
        "run", "Observation", str(gz), "--out", str(tmp_path / "d.parquet"), "--engine", "duckdb"
    )
    python = cli(
        "run", "Observation", str(gz), "--out", str(tmp_path / "p.parquet"), "--engine", "python"
    )
    assert duck.returncode == 0 and python.returncode == 0, duck.stderr + python.stderr
    assert "engine duckdb" in duck.stderr and "engine python" in python.stderr
    assert pq.read_table(tmp_path / "d.parquet").equals(pq.read_table(tmp_path / "p.parquet"))


def test_command_falls_back_to_python_for_an_unsupported_view(tmp_path):
    view = tmp_path / "view.json"
    view.write_bytes(orjson.dumps({"resource": "Patient", "select": [{"column": [
        {"name": "n", "path": "name.count()", "type": "integer"}]}]}))  # fmt: skip
    data = write(tmp_path / "p.ndjson", [{"resourceType": "Patient", "name": [{}, {}]}])
    done = cli(
        "run", str(view), str(data), "--out", str(tmp_path / "o.parquet"), "--engine", "duckdb"
    )
    assert done.returncode == 0, done.stderr
    assert "not translated to SQL (count())" in done.stderr and "engine python" in done.stderr
    assert pq.read_table(tmp_path / "o.parquet").to_pylist() == [{"n": 2}]


def test_command_reruns_on_python_after_a_bad_json_line(tmp_path):
    data = tmp_path / "p.ndjson"
    data.write_bytes(b'{"resourceType": "Patient", "id": "a"}\n{not json\n[1]\n')
    done = cli(
        "run", "Patient", str(data), "--out", str(tmp_path / "o.parquet"), "--engine", "duckdb"
    )
    assert done.returncode == 0, done.stderr
    assert "duckdb stopped" in done.stderr and "engine python" in done.stderr
    assert "2 line(s) skipped" in done.stderr
    assert [r["id"] for r in pq.read_table(tmp_path / "o.parquet").to_pylist()] == ["a"]


def test_command_reports_the_python_view_error_for_several_values(tmp_path):
    view = tmp_path / "view.json"
    view.write_bytes(orjson.dumps({"resource": "Patient", "select": [{"column": [
        {"name": "family", "path": "name.family", "type": "string"}]}]}))  # fmt: skip
    data = write(tmp_path / "p.ndjson", [{"resourceType": "Patient", "name": [{"family": "A"}, {"family": "B"}]}])  # fmt: skip
    out = tmp_path / "o.csv"
    done = cli("run", str(view), str(data), "--out", str(out), "--engine", "duckdb")
    assert done.returncode == 1
    assert "duckdb stopped" in done.stderr and "Collection value" in done.stderr
