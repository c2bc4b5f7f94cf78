"""Resources that do not fit a view: counted nulls or a clear error, never a crash or a wrong value."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from jupyterhub_smart import views
from jupyterhub_smart.views import builtin, warnings_of

TYPED = {
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "id", "type": "id"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "births", "path": "multipleBirth.ofType(integer)", "type": "integer"},
                {"name": "born", "path": "birthDate", "type": "date"},
                {"name": "family", "path": "name.family", "type": "string", "collection": True},
                {
                    "name": "weight",
                    "path": "extension('w').value.ofType(decimal)",
                    "type": "decimal",
                },
            ]
        }
    ],
}


def test_wrong_json_types_become_counted_nulls():
    resources: list[Any] = [
        {"resourceType": "Patient", "id": "ok", "active": True, "multipleBirthInteger": 2, "birthDate": "1990",
         "name": [{"family": "A"}], "extension": [{"url": "w", "valueDecimal": 70.5}]},
        {"resourceType": "Patient", "id": 7, "active": "yes", "multipleBirthInteger": True, "birthDate": 1990,
         "name": [{"family": 3}, {"family": "B"}], "extension": [{"url": "w", "valueDecimal": "heavy"}]},
        {"resourceType": "Patient", "id": "n", "active": None, "multipleBirthInteger": 1.5, "name": "Smith"},
    ]  # fmt: skip
    table = views.run(TYPED, resources)
    assert table.to_pylist() == [
        {"id": "ok", "active": True, "births": 2, "born": "1990", "family": ["A"], "weight": 70.5},
        {
            "id": None,
            "active": None,
            "births": None,
            "born": None,
            "family": [None, "B"],
            "weight": None,
        },
        {"id": "n", "active": None, "births": None, "born": None, "family": [], "weight": None},
    ]
    assert warnings_of(table) == {
        "id": 1,
        "active": 1,
        "births": 2,
        "born": 1,
        "family": 1,
        "weight": 1,
    }


def test_non_object_resources_and_other_types_are_skipped():
    table = views.run(TYPED, [None, [], "Patient", 5, {"resourceType": "Observation"}, {"id": "x"}])
    assert table.num_rows == 0


@pytest.mark.parametrize("name", builtin.names())
def test_builtin_views_survive_malformed_resources(name):
    odd: list[Any] = [
        {"resourceType": name},
        {"resourceType": name, "id": 7, "code": "x", "subject": [], "category": {}, "valueQuantity": "high",
         "effectiveDateTime": 2024, "name": "Smith", "identifier": {}, "period": [], "component": "bp",
         "birthDate": "not a date", "meta": [], "medicationCodeableConcept": [1, 2], "dosage": "lots",
         "content": [{"attachment": "x"}], "result": {"reference": 5}, "vaccineCode": None},
    ]  # fmt: skip
    table = views.run(builtin.load(name), odd)
    assert table.num_rows >= 2
    assert table.column("id").to_pylist()[:2] == [None, None]


def test_fifty_megabyte_resource():
    big = {
        "resourceType": "Patient",
        "id": "big",
        "name": [{"family": "F", "given": ["y" * 1024] * 51_200}],
    }
    view = {"resource": "Patient", "select": [{"column": [
        {"name": "id", "path": "id"},
        {"name": "n", "path": "name.given.count()"},
        {"name": "first", "path": "name.given.first().length()"},
    ]}]}  # fmt: skip
    assert views.run(view, [big]).to_pylist() == [{"id": "big", "n": 51_200, "first": 1024}]


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"linkId": str(depth)}
    for level in range(depth - 1, 0, -1):
        node = {"linkId": str(level), "item": [node]}
    return {"resourceType": "QuestionnaireResponse", "id": "q", "item": [node]}


def test_deep_nesting_is_walked_without_recursion():
    depth = sys.getrecursionlimit() * 3
    view = {"resource": "QuestionnaireResponse", "select": [{"repeat": ["item"], "column": [
        {"name": "link", "path": "linkId"}, {"name": "i", "path": "%rowIndex"}]}]}  # fmt: skip
    table = views.run(view, [nested(depth)])
    assert table.num_rows == depth
    assert table.column("link").to_pylist()[-1] == str(depth)


def test_comparing_deeply_nested_values_does_not_crash():
    depth = sys.getrecursionlimit() * 3
    twins = nested(depth)["item"] + nested(depth)["item"]  # equal, built separately
    resource = {"resourceType": "QuestionnaireResponse", "id": "q", "item": twins}
    view = {"resource": "QuestionnaireResponse", "select": [{"column": [
        {"name": "id", "path": "id"}, {"name": "n", "path": "item.distinct().count()"}]}]}  # fmt: skip
    table = views.run(view, [resource])
    assert table.to_pylist() == [{"id": "q", "n": 2}]  # too deep to compare: kept as distinct


def test_deeply_nested_expression_is_a_view_error():
    view = {
        "resource": "Patient",
        "select": [{"column": [{"name": "x", "path": "(" * 500 + "1" + ")" * 500}]}],
    }
    with pytest.raises(views.ViewDefinitionError, match=r"select\[0\]\.column\[0\]\.path.*nested"):
        views.compile_view(view)


def test_batches_stream_without_reading_ahead():
    """Memory stays flat: a batch is handed over before the next resources are read."""
    read = 0

    def patients():
        nonlocal read
        for i in range(10):
            read += 1
            yield {"resourceType": "Patient", "id": f"p{i}"}

    view = {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}
    seen = []
    for batch in views.iter_batches(view, patients(), batch_rows=3):
        seen.append((batch.num_rows, read))
    assert seen == [(3, 3), (3, 6), (3, 9), (1, 10)]
