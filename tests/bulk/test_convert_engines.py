"""The export's Parquet conversion gives the same parts on the Arrow engine as on the closures.

``TypeConverter.lines_batch`` (raw NDJSON lines, the views' Arrow engine) and
``TypeConverter.batch`` (parsed resources, the closure engine, used for chunks
with an invalid line) must write identical batches: same schema, rows, order
and counted warnings, for every type the sandbox exports.
"""

from __future__ import annotations

from collections import defaultdict

import orjson
import pytest

from jupyterhub_smart import views
from jupyterhub_smart.bulk.output import TypeConverter, ViewWriter
from jupyterhub_smart.sandbox.fhir.synthetic import generate
from jupyterhub_smart.views import builtin
from jupyterhub_smart.views.vector import Fallback

BY_TYPE: dict[str, list[bytes]] = defaultdict(list)
for _row in generate(10, 3):
    BY_TYPE[_row.resource_type].append(orjson.dumps(orjson.loads(_row.json)))


@pytest.mark.parametrize("resource_type", sorted(BY_TYPE))
def test_lines_batch_equals_the_closure_batch(resource_type):
    lines = BY_TYPE[resource_type]
    fast = TypeConverter(resource_type)
    slow = TypeConverter(resource_type)
    got = fast.lines_batch(lines)
    expected = slow.batch([(orjson.loads(line), line) for line in lines])
    assert got.schema.equals(expected.schema, check_metadata=True)
    assert got.to_pylist() == expected.to_pylist()
    assert fast.vector is not None


def test_resources_without_rows_keep_their_id_and_json():
    view_less = {"resourceType": "Observation", "id": "o1", "status": "final"}
    wrong = {"resourceType": "Observation", "id": "o2", "valueQuantity": {"value": "7"}}
    lines = [orjson.dumps(view_less), BY_TYPE["Observation"][0]]
    converter = TypeConverter("Observation")
    rows = converter.lines_batch(lines).to_pylist()
    assert [r["resource_id"] for r in rows][:1] == ["o1"]
    assert rows[0]["resource"] == lines[0].decode()
    with pytest.raises(Fallback):  # a value the closures must judge (counted null there)
        converter.lines_batch([orjson.dumps(wrong)])


@pytest.mark.parametrize(
    "bad",
    [b"{not json", b'{"resourceType":"Patient","id":"p"}', b'{"resourceType":"Observation"}',
     b'{"resourceType":"Observation","id":5}', b"[1]",
     b'{"resourceType":"Observation","id":"a"} {"resourceType":"Observation","id":"b"}',
     b'{"resourceType":"Observation","id":"a"}\r', b""],
)  # fmt: skip
def test_lines_that_are_not_resources_of_the_type_go_back_to_the_line_checks(bad):
    with pytest.raises(Fallback):
        TypeConverter("Observation").lines_batch([BY_TYPE["Observation"][0], bad])


def test_user_view_lines_batch_equals_the_closures():
    definition = builtin.load("Observation")
    fast, slow = ViewWriter("obs", definition), ViewWriter("obs", definition)
    lines = BY_TYPE["Observation"]
    got = fast.lines_batch(lines)
    expected = slow.batch([orjson.loads(line) for line in lines])
    assert got is not None and expected is not None
    assert got.to_pylist() == expected.to_pylist()
    assert views.warnings_of(got) == views.warnings_of(expected)
