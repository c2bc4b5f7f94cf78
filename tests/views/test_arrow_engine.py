"""The Arrow engine (``views.vector``) gives exactly what the closure engine gives.

Each test runs a view on both engines and compares the Arrow tables: schema,
values, order and counted warnings. Where the closure engine raises a view
error, the Arrow engine raises the same. Tests also check which engine did the
work (a chunk the Arrow engine hands back runs on the closures, so equality
alone would not show that the fast path ran).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jupyterhub_smart import views
from jupyterhub_smart.sandbox.fhir.synthetic import generate
from jupyterhub_smart.views import builtin
from jupyterhub_smart.views.table import TableConverter
from jupyterhub_smart.views.vector import (
    EngineStats,
    Fallback,
    Unsupported,
    block_batches,
    chunk_batches,
    compile_vector,
    object_lines,
)

COMMAND = [sys.executable, "-m", "jupyterhub_smart", "view"]


def arrow_run(
    view: dict[str, Any], resources: list[Any], size: int = 7
) -> tuple[pa.Table, EngineStats]:
    """The view on the Arrow engine, in chunks of ``size`` resources, with the engine counts."""
    compiled = views.compile_view(view)
    vector = compile_vector(compiled)
    converter = TableConverter(compiled.columns)
    stats = EngineStats()
    chunks = [
        (
            [orjson.dumps(r) for r in resources[i : i + size]],
            lambda i=i: resources[i : i + size],
            None,
        )
        for i in range(0, len(resources), size)
    ]
    batches = list(chunk_batches(compiled, vector, chunks, converter, stats))
    return converter.table(batches), stats


def block_run(
    view: dict[str, Any], resources: list[Any], size: int = 7
) -> tuple[pa.Table, EngineStats]:
    """The view on the Arrow engine's block path: ``size`` resources a block, read whole."""
    compiled = views.compile_view(view)
    vector = compile_vector(compiled)
    converter = TableConverter(compiled.columns)
    stats = EngineStats()
    lines = [orjson.dumps(r) for r in resources]
    blocks = [
        (
            b"\n".join(lines[i : i + size]) + b"\n",
            lambda i=i: (lines[i : i + size], lambda: resources[i : i + size], None),
            lambda n: None,
        )
        for i in range(0, len(resources), size)
    ]
    batches = list(block_batches(compiled, vector, blocks, converter, stats))
    return converter.table(batches), stats


def assert_same(view: dict[str, Any], resources: list[Any], *, fast: bool, size: int = 7) -> None:
    """Both engines agree, in chunks of lines and in blocks; ``fast``: every chunk ran on the
    Arrow engine."""
    try:
        expected = views.run(view, resources)
    except views.ViewEvaluationError as exc:
        for run in (arrow_run, block_run):
            with pytest.raises(views.ViewEvaluationError) as raised:
                run(view, resources, size)
            assert str(raised.value) == str(exc)
        return
    for run in (arrow_run, block_run):
        got, stats = run(view, resources, size)
        assert got.schema.equals(expected.schema, check_metadata=True)
        assert got.to_pylist() == expected.to_pylist()
        assert views.warnings_of(got) == views.warnings_of(expected)
        if fast and run is arrow_run:
            assert stats.closure_chunks == 0, stats.last_fallback
            assert stats.vector_chunks > 0


@pytest.fixture(scope="module")
def sandbox_resources() -> list[dict[str, Any]]:
    return [orjson.loads(row.json) for row in generate(12, 5)]


#: Resources of the built-in types the sandbox generator does not make, with every column's element.
OTHER_TYPES: list[dict[str, Any]] = [
    {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
     "clinicalStatus": {"coding": [{"code": "active"}]}, "verificationStatus": {"coding": [{"code": "confirmed"}]},
     "type": "allergy", "category": ["food", "medication"], "criticality": "high",
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91935009", "display": "Peanut"}]},
     "onsetDateTime": "2020-01-01", "recordedDate": "2020-01-02"},
    {"resourceType": "AllergyIntolerance", "id": "a2", "patient": {"reference": "Patient/p2"},
     "onsetPeriod": {"start": "2019"}, "code": {"text": "dust"}},
    {"resourceType": "DiagnosticReport", "id": "d1", "status": "final", "subject": {"reference": "Patient/p1"},
     "encounter": {"reference": "Encounter/e1"}, "category": [{"coding": [{"code": "LAB"}]}],
     "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC"}]},
     "effectivePeriod": {"start": "2020-01-01T10:00:00Z"}, "issued": "2020-01-02T00:00:00Z",
     "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}]},
    {"resourceType": "DocumentReference", "id": "r1", "status": "current", "docStatus": "final",
     "subject": {"reference": "Patient/p1"}, "date": "2020-01-01T00:00:00Z",
     "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9", "display": "Summary"}]},
     "category": [{"coding": [{"code": "clinical-note"}]}], "author": [{"reference": "Practitioner/x"}],
     "context": {"encounter": [{"reference": "Encounter/e1"}]},
     "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/b1", "title": "Note", "size": 12}}]},
    {"resourceType": "DocumentReference", "id": "r2", "status": "current", "description": "described",
     "content": [{"attachment": {"contentType": "application/pdf"}}]},
    {"resourceType": "Immunization", "id": "i1", "status": "completed", "patient": {"reference": "Patient/p1"},
     "encounter": {"reference": "Encounter/e1"}, "occurrenceDateTime": "2021-03-01",
     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "207", "display": "COVID"}]},
     "primarySource": True, "lotNumber": "L1"},
    {"resourceType": "Immunization", "id": "i2", "status": "not-done", "patient": {"reference": "Patient/p2"},
     "occurrenceString": "childhood", "vaccineCode": {"text": "MMR"}, "primarySource": False},
    {"resourceType": "MedicationAdministration", "id": "m1", "status": "completed",
     "subject": {"reference": "Patient/p1"}, "context": {"reference": "Encounter/e1"},
     "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                               "code": "1049630", "display": "diphenhydramine"}]},
     "effectiveDateTime": "2020-01-01T10:00:00Z",
     "dosage": {"dose": {"value": 25, "unit": "mg", "code": "mg"}, "route": {"coding": [{"code": "PO"}]}}},
    {"resourceType": "MedicationAdministration", "id": "m2", "status": "completed",
     "subject": {"reference": "Patient/p2"}, "medicationReference": {"reference": "Medication/x"},
     "effectivePeriod": {"start": "2020-02-01"}, "dosage": {"dose": {"value": 2.5, "code": "mL"}}},
    {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
     "encounter": {"reference": "Encounter/e1"},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002", "display": "Appendectomy"}]},
     "performedPeriod": {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"}},
    {"resourceType": "Procedure", "id": "pr2", "status": "completed", "subject": {"reference": "Patient/p2"},
     "performedDateTime": "2019-05-05", "code": {"text": "x-ray"}},
]  # fmt: skip


@pytest.mark.parametrize("name", builtin.names())
def test_every_builtin_view_runs_on_the_arrow_engine_and_equals_the_closures(
    name, sandbox_resources
):
    view = builtin.load(name)
    compile_vector(view)  # covered: no view-level fallback for a built-in view
    resources = [r for r in [*sandbox_resources, *OTHER_TYPES] if r["resourceType"] == name]
    assert resources, f"no test data for {name}"
    assert_same(view, resources, fast=True, size=200)
    for some, size in ((resources, len(resources)), (resources[:30], 3)):
        # one block of one type, several: each read whole
        table, stats = block_run(view, some, size)
        assert stats.closure_chunks == 0, stats.last_fallback
        assert stats.vector_chunks == -(-len(some) // size)
        assert table.to_pylist() == views.run(view, some).to_pylist()
    everything = [*sandbox_resources, *OTHER_TYPES]  # other types give no rows
    assert_same(view, everything, fast=True, size=400)


#: Values of the wrong shape for any element (scalars for objects, nulls in arrays, numbers for
#: strings, several values for one, a bool for a number).
ODD_VALUES: list[Any] = [
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


@pytest.mark.parametrize("name", builtin.names())
def test_wrong_shapes_give_what_the_closures_give(name):
    view = builtin.load(name)
    keys = sorted({c.path.split(".")[0].strip("(%") for c in views.compile_view(view).columns})
    keys += ["value", "valueQuantity", "valueAge", "component", "subjectQuantity", "effective"]
    for key in keys:
        resources = [
            {"resourceType": name, "id": f"r{i}", key: v} for i, v in enumerate(ODD_VALUES)
        ]
        assert_same(view, resources, fast=False)


VIEWS: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    (  # forEachOrNull with nested forEach, collection columns, join, boolean toString, where
        {
            "resource": "Patient",
            "select": [
                {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"},
                            {"name": "active", "path": "active.toString()", "type": "string"},
                            {"name": "official", "path": "name.where(use = 'official').family.first()",
                             "type": "string"},
                            {"name": "not_old", "path": "name.where(use != 'old').exists()", "type": "boolean"},
                            {"name": "ids", "path": "identifier.value", "type": "string", "collection": True}]},
                {"forEachOrNull": "address", "column": [
                    {"name": "city", "path": "city", "type": "string"},
                    {"name": "lines", "path": "line", "type": "string", "collection": True},
                    {"name": "joined", "path": "line.join(', ')", "type": "string"}],
                 "select": [{"forEach": "line", "column": [{"name": "line", "path": "$this", "type": "string"}]}]},
            ],
        },
        [
            {"resourceType": "Patient", "id": "a", "active": True,
             "name": [{"use": "old", "family": "F"}, {"use": "official", "family": "G"}],
             "identifier": [{"value": "1"}, {"system": "x"}, {"value": "2"}],
             "address": [{"city": "X", "line": ["1", "2"]}, {"line": [None, "3"]}, {"city": "Y"}]},
            {"resourceType": "Patient", "id": "b", "active": False, "name": [{"family": "H"}]},
            {"resourceType": "Patient", "id": "c"},
            {"resourceType": "Observation", "id": "o"},
        ],
    ),
    (  # unionAll, view where, constants, extension, getReferenceKey, ofType, exists/empty, not()
        {
            "resource": "Observation",
            "constant": [{"name": "sys", "valueUri": "http://loinc.org"},
                         {"name": "yes", "valueBoolean": True}],
            "where": [{"path": "status = 'final' or status = 'amended'"}],
            "select": [
                {"column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                    {"name": "any_key", "path": "subject.getReferenceKey()", "type": "string"},
                    {"name": "ext", "path": "extension('http://e').value.ofType(string).first()",
                     "type": "string"},
                    {"name": "has_note", "path": "note.exists()", "type": "boolean"},
                    {"name": "no_note", "path": "note.empty().not()", "type": "boolean"},
                    {"name": "flag", "path": "valueBoolean = %yes", "type": "boolean"}]},
                {"unionAll": [
                    {"column": [
                        {"name": "code", "path": "code.coding.where(system = %sys).code.first()", "type": "code"},
                        {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                        {"name": "whole", "path": "value.ofType(Quantity).value", "type": "integer"}]},
                    {"forEach": "component", "column": [
                        {"name": "code", "path": "code.coding.first().code", "type": "code"},
                        {"name": "value", "path": "(value.ofType(Quantity).value | value.ofType(integer)).first()",
                         "type": "decimal"},
                        {"name": "whole", "path": "value.ofType(integer)", "type": "integer"}]},
                ]},
            ],
        },
        [
            {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://x", "code": "no"}, {"system": "http://loinc.org", "code": "1-1"}]},
             "valueQuantity": {"value": 1.25}, "note": [{"text": "n"}],
             "extension": [{"url": "http://e", "valueString": "E"}, {"url": "http://f", "valueString": "F"}],
             "component": [{"code": {"coding": [{"code": "c1"}]}, "valueInteger": 3},
                           {"code": {"coding": [{"code": "c2"}]}, "valueQuantity": {"value": 4.0}}]},
            {"resourceType": "Observation", "id": "o2", "status": "amended",
             "subject": {"reference": "https://ehr.example/fhir/Group/g/_history/3"},
             "valueQuantity": {"value": 7}, "valueBoolean": True},
            {"resourceType": "Observation", "id": "o3", "status": "preliminary"},
            {"resourceType": "Observation", "id": "o4", "status": "final", "subject": {"reference": "urn:uuid:1"},
             "valueBoolean": False},
        ],
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(VIEWS)))
def test_spec_areas_run_on_the_arrow_engine(case):
    view, resources = VIEWS[case]
    assert_same(view, resources, fast=True)
    assert views.run(view, resources).num_rows > 0


def test_data_the_arrow_engine_does_not_read_exactly_goes_to_the_closures():
    view, resources = VIEWS[1]
    odd = [
        {**resources[0], "valueQuantity": {"value": "7"}},  # a string where FHIR has a number
        {**resources[0], "status": ["final"]},  # an array where FHIR has one value
        {**resources[0], "value": 5},  # a key FHIR does not define, which the closures read
        {**resources[0], "subject": {"reference": "Patient/a\n"}},  # regex line-end semantics
    ]
    for resource in odd:
        table, stats = arrow_run(view, [resource])
        assert stats.closure_chunks == 1 and stats.vector_chunks == 0
        assert table.to_pylist() == views.run(view, [resource]).to_pylist()


def test_keys_the_closures_read_for_an_absent_choice_name_are_read_the_same():
    """Where ``subject`` (a choice name in FHIR) or Quantity's ``value`` is absent, the closure
    engine reads any ``subject[X...]``/``value[X...]`` key of that object, even one of no FHIR
    type: such data goes to the closures; data without such keys stays on the fast path."""
    view = builtin.load("Observation")
    base = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "c"}}
    odd = [
        {**base, "subjectFoo": {"reference": "Patient/x"}},
        {**base, "subject": {"reference": "Patient/y"}, "valueQuantity": {"valueFoo": 3}},
        {**base, "component": [{"valueQuantity": {"valueQuantity": {"value": 2}}}]},
        {**base, "subjectReference": None, "subjectString": "s"},
    ]
    for resource in odd:
        assert_same(view, [resource], fast=False)
        for run in (arrow_run, block_run):
            assert run(view, [resource])[1].closure_chunks == 1
    plain = [
        {**base, "valueQuantity": {"unit": "mg"}},  # no subject, no value: no such keys
        {**base, "note": [{"text": "subject"}], "valueString": "a subjectX"},
    ]
    assert_same(view, plain, fast=True)
    table, stats = block_run(view, plain)
    assert stats.closure_chunks == 0 and table.num_rows == 2
    vector = compile_vector(view)
    escaped = b'{"resourceType":"Observation","id":"o","subject\\u0046oo":{"reference":"P/x"}}'
    with pytest.raises(Fallback, match="escaped"):
        vector.read_block(escaped)
    # resources parsed elsewhere (a search page), without their bytes: handed back when absent
    parsed = vector.read_block(b"\n".join(orjson.dumps(r) for r in plain))
    with pytest.raises(Fallback, match="subject absent"):
        vector.rows(parsed)
    assert len(vector.rows(parsed, choices_checked=True)[0]) == 2


def test_several_values_in_a_column_is_the_closure_engines_error():
    view = {"resource": "Patient", "select": [{"column": [{"name": "n", "path": "name.family"}]}]}
    view["select"][0]["column"][0]["type"] = "string"
    resources = [{"resourceType": "Patient", "name": [{"family": "a"}, {"family": "b"}]}]
    assert_same(view, resources, fast=False)
    with pytest.raises(views.ViewEvaluationError, match="collection"):
        views.run(view, resources, engine="arrow")


@pytest.mark.parametrize(
    "path",
    ["name.count()", "%rowIndex", "name.family + 'x'", "value", "name.given.substring(1)",
     "contained.id", "(name | address).first()", "name.first()"],
)  # fmt: skip
def test_views_outside_the_fast_path_are_refused_at_compile_time(path):
    view = {"resource": "Patient", "select": [{"column": [{"name": "x", "path": path}]}]}
    if path != "name.first()":  # an untyped or complex column: closure engine
        view["select"][0]["column"][0]["type"] = "string"
    with pytest.raises(Unsupported):
        compile_vector(view)
    resources = [{"resourceType": "Patient", "name": [{"family": "a", "given": ["b"]}]}]
    assert views.run(view, resources, engine="auto").equals(views.run(view, resources))


@pytest.mark.parametrize(
    ("data", "lines"),
    [(b'{"a":1}\n{"b":2}\n', 2), (b'{"a":1}\n{"b":2}', 2), (b"{}", 1),
     (b'{"a":1}\n\n{"b":2}\n', None), (b'{"a":1}\n  \n{"b":2}', None),
     (b'\n{"a":1}\n', None), (b'{"a":1}\r\n', None), (b'{"a":1} \n', None),
     (b' {"a":1}\n', None), (b"[1]\n", None), (b"", None), (b"}\n{", None)],
)  # fmt: skip
def test_a_block_is_read_whole_only_when_every_line_is_one_brace_pair(data, lines):
    assert object_lines(data) == lines


def _lines_file(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def test_command_blocks_of_one_type_equal_python_with_odd_lines(
    tmp_path, sandbox_resources, capsys
):
    """Blocks read whole, and blocks with a blank, CRLF, two-object or bad line (read line by
    line): the same table and the same bad-line report as the closure engine."""
    from jupyterhub_smart.cli import main

    observations = [
        orjson.dumps(r) for r in sandbox_resources if r["resourceType"] == "Observation"
    ]
    plain = _lines_file(tmp_path / "plain.ndjson", [line + b"\n" for line in observations[:300]])
    odd_lines = [line + b"\n" for line in observations[:60]]
    odd_lines[10] = b"\n"
    odd_lines[20] = odd_lines[20][:-1] + b"\r\n"
    odd_lines[30] = observations[30] + b" " + observations[31] + b"\n"
    odd_lines[40] = b'{"resourceType":"Observation",\n'
    odd_lines[-1] = odd_lines[-1][:-1]  # no newline at the end
    odd = _lines_file(tmp_path / "odd.ndjson", odd_lines)
    outputs = {}
    for engine in ("python", "arrow"):
        out = tmp_path / f"{engine}.parquet"
        # 16 rows a batch: 4 KB blocks, so a file is several blocks (some lines are longer)
        command = ["view", "run", "Observation", str(plain), str(odd), "--out", str(out)]
        assert main([*command, "--engine", engine, "--batch-rows", "16"]) == 0
        outputs[engine] = (pq.read_table(out), capsys.readouterr().err.replace(str(out), "OUT"))
    (python, python_err), (arrow, arrow_err) = outputs["python"], outputs["arrow"]
    assert arrow.schema.equals(python.schema, check_metadata=True)
    assert arrow.to_pylist() == python.to_pylist()
    assert "engine arrow" in arrow_err
    # rows, lines read and each skipped line with its number, as the closure engine says them
    report = [line for line in python_err.splitlines() if "engine" not in line]
    assert len(report) == 4 and "454 rows from 359 lines" in report[0]
    assert report == [line for line in arrow_err.splitlines() if "engine" not in line]
    assert "2 line(s) skipped" in arrow_err and "odd.ndjson:31" in arrow_err
    counts = re.search(r"(\d+) of (\d+) chunk\(s\) on the closure engine", arrow_err)
    assert counts is not None, arrow_err
    on_closures, blocks = int(counts[1]), int(counts[2])
    assert blocks > 10 and 1 <= on_closures < blocks / 2  # most blocks were read whole


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine"):
        views.run(builtin.load("Patient"), [], engine="fast")


def _write(path: Path, resources: list[Any], *, bad: bytes = b"") -> Path:
    data = b"".join(orjson.dumps(r) + b"\n" for r in resources) + bad
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_command_arrow_engine_equals_python_on_gzip_and_bad_lines(tmp_path, sandbox_resources):
    source = _write(tmp_path / "in.ndjson.gz", sandbox_resources)
    broken = _write(
        tmp_path / "broken.ndjson",
        sandbox_resources[:50],
        bad=b'{not json\n{"resourceType":"Observation",\n',
    )
    outputs = {}
    for engine in ("python", "arrow", "auto"):
        out = tmp_path / f"{engine}.parquet"
        done = _command(
            "run", "Observation", str(source), str(broken), "--out", str(out), "--engine", engine
        )
        assert done.returncode == 0, done.stderr
        outputs[engine] = (pq.read_table(out), done.stderr)
    python, _ = outputs["python"]
    for engine in ("arrow", "auto"):
        table, stderr = outputs[engine]
        assert table.to_pylist() == python.to_pylist()
        assert "engine arrow" in stderr
        # a bad line without the type's name is checked apart; one with it sends its chunk
        # to the closure engine: both are reported as the closure engine reports them
        assert "2 line(s) skipped" in stderr
        assert "broken.ndjson:51" in stderr and "broken.ndjson:52" in stderr
        assert "1 of 2 chunk(s) on the closure engine" in stderr


def test_command_auto_runs_python_for_a_view_outside_the_fast_path(tmp_path):
    view = tmp_path / "v.json"
    column = {"name": "n", "path": "name.count()", "type": "integer"}
    view.write_text(
        orjson.dumps({"resource": "Patient", "select": [{"column": [column]}]}).decode()
    )
    source = _write(tmp_path / "p.ndjson", [{"resourceType": "Patient", "name": [{}, {}]}])
    done = _command("run", str(view), str(source), "--out", str(tmp_path / "o.ndjson"))
    assert done.returncode == 0, done.stderr
    assert "engine python (the Arrow engine does not cover count())" in done.stderr
    assert orjson.loads((tmp_path / "o.ndjson").read_bytes()) == {"n": 2}
