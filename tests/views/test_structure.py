"""ViewDefinition structure, element by element, from the SQL on FHIR v2 specification.

Each test names the part of the spec it checks: the logical model (resource,
select, column, forEach, forEachOrNull, unionAll, repeat, where, constant), the
processing algorithm (Cartesian product of selects, null row of forEachOrNull,
column ordering) and the validation rules (ValidateColumns, sql-name,
sql-expressions). Rows are compared without regard to order.
"""

from __future__ import annotations

from typing import Any

import pytest

from jupyterhub_smart import views
from jupyterhub_smart.views import ViewDefinitionError, ViewEvaluationError

PATIENTS: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "a",
        "active": True,
        "gender": "female",
        "name": [
            {"use": "official", "family": "Ames", "given": ["Ann", "Bea"]},
            {"family": "Old"},
        ],
        "address": [{"city": "Oslo", "postalCode": "01"}, {"city": "Bergen"}],
        "contact": [{"telecom": [{"system": "phone", "value": "c1"}]}],
        "telecom": [{"system": "phone", "value": "t1"}, {"system": "email", "value": "e1"}],
    },
    {"resourceType": "Patient", "id": "b", "active": False, "name": [{"family": "Bo"}]},
    {"resourceType": "Patient", "id": "c"},
    {"resourceType": "Observation", "id": "o1", "status": "final"},
]


def view(*selects: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ViewDefinition",
        "resource": "Patient",
        "select": list(selects),
        **extra,
    }


def col(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, **extra}


# --- resource (view_resource): only resources of the view's type give rows --------------


def test_only_resources_of_the_view_type_give_rows(rows):
    assert rows(view({"column": [col("id", "id")]}), PATIENTS) == [
        {"id": "a"},
        {"id": "b"},
        {"id": "c"},
    ]
    obs = {"resource": "Observation", "select": [{"column": [col("id", "id")]}]}
    assert rows(obs, PATIENTS) == [{"id": "o1"}]


def test_resource_type_prefix_in_a_path_filters_by_type(rows):
    got = rows(view({"column": [col("id", "Patient.id"), col("x", "Observation.id")]}), PATIENTS)
    assert got == [{"id": "a", "x": None}, {"id": "b", "x": None}, {"id": "c", "x": None}]


# --- column (basic) ------------------------------------------------------------------------


def test_missing_element_is_null_and_types_follow_the_values(rows):
    got = rows(
        view({"column": [col("id", "id"), col("active", "active"), col("g", "gender")]}), PATIENTS
    )
    assert got == [
        {"id": "a", "active": True, "g": "female"},
        {"id": "b", "active": False, "g": None},
        {"id": "c", "active": None, "g": None},
    ]


def test_columns_come_out_in_view_order_parent_then_nested_then_union():
    spec_order = view(
        {
            "column": [col("a", "'A'"), col("b", "'B'")],
            "select": [{"forEach": "name", "column": [col("c", "'C'"), col("d", "'D'")]}],
            "unionAll": [
                {"column": [col("e", "'E1'"), col("f", "'F1'")]},
                {"column": [col("e", "'E2'"), col("f", "'F2'")]},
            ],
        },
        {"column": [col("g", "'G'"), col("h", "'H'")]},
    )
    table = views.run(spec_order, PATIENTS)
    assert table.column_names == ["a", "b", "c", "d", "e", "f", "g", "h"]
    # patient a: 2 names x 2 union rows; b: 1 x 2; c has no name -> no rows (forEach)
    assert table.num_rows == 6


def test_declared_types_become_arrow_types():
    typed = view(
        {
            "column": [
                col("id", "id", type="id"),
                col("active", "active", type="boolean"),
                col("n", "name.count()", type="integer"),
                col("d", "name.count() / 2", type="decimal"),
                col("given", "name.given", type="string", collection=True),
            ]
        }
    )
    table = views.run(typed, PATIENTS)
    assert [str(f.type) for f in table.schema] == [
        "string",
        "bool",
        "int64",
        "double",
        "list<item: string>",
    ]
    assert table.schema.field("active").metadata == {b"fhir_type": b"boolean"}
    assert table.to_pylist()[0] == {
        "id": "a",
        "active": True,
        "n": 2,
        "d": 1.0,
        "given": ["Ann", "Bea"],
    }


def test_empty_input_gives_an_empty_table_with_the_columns():
    table = views.run(view({"column": [col("id", "id", type="id"), col("n", "name.count()")]}), [])
    assert table.num_rows == 0
    assert table.column_names == ["id", "n"]


# --- collection -------------------------------------------------------------------------------


def test_collection_true_gives_a_list_column(rows):
    got = rows(
        view({"column": [col("id", "id"), col("family", "name.family", collection=True)]}), PATIENTS
    )
    assert got == [
        {"id": "a", "family": ["Ames", "Old"]},
        {"id": "b", "family": ["Bo"]},
        {"id": "c", "family": []},
    ]


@pytest.mark.parametrize("collection", [False, None])
def test_several_values_without_collection_true_is_an_error(collection):
    column = col("family", "name.family")
    if collection is not None:
        column["collection"] = collection
    with pytest.raises(
        ViewEvaluationError, match=r"select\[0\]\.column\[0\]\.path.*Collection value"
    ):
        views.run(view({"column": [column]}), PATIENTS)


def test_collection_false_is_relative_to_the_foreach_focus(rows):
    got = rows(
        view({"forEach": "name", "column": [col("family", "family", collection=False)]}), PATIENTS
    )
    assert got == [{"family": "Ames"}, {"family": "Bo"}, {"family": "Old"}]


# --- forEach / forEachOrNull (foreach) --------------------------------------------------------


def test_foreach_gives_one_row_per_item_and_drops_resources_without_any(rows):
    got = rows(
        view(
            {"column": [col("id", "id")]}, {"forEach": "address", "column": [col("city", "city")]}
        ),
        PATIENTS,
    )
    assert got == [{"id": "a", "city": "Bergen"}, {"id": "a", "city": "Oslo"}]


def test_foreach_or_null_keeps_one_null_row(rows):
    got = rows(
        view(
            {"column": [col("id", "id")]},
            {"forEachOrNull": "address", "column": [col("city", "city")]},
        ),
        PATIENTS,
    )
    assert got == [
        {"id": "a", "city": "Bergen"},
        {"id": "a", "city": "Oslo"},
        {"id": "b", "city": None},
        {"id": "c", "city": None},
    ]


def test_foreach_applies_to_nested_selects_the_same_as_to_columns(rows):
    direct = view({"forEach": "address", "column": [col("zip", "postalCode")]})
    nested = view({"forEach": "address", "select": [{"column": [col("zip", "postalCode")]}]})
    assert rows(direct, PATIENTS) == rows(nested, PATIENTS) == [{"zip": "01"}, {"zip": None}]


def test_nested_foreach_and_sibling_cross_join(rows):
    got = rows(
        view(
            {"column": [col("id", "id")]},
            {
                "forEach": "name",
                "select": [{"forEach": "given", "column": [col("given", "$this")]}],
            },
            {"forEach": "telecom", "column": [col("t", "value")]},
        ),
        PATIENTS,
    )
    assert got == [
        {"id": "a", "given": "Ann", "t": "e1"},
        {"id": "a", "given": "Ann", "t": "t1"},
        {"id": "a", "given": "Bea", "t": "e1"},
        {"id": "a", "given": "Bea", "t": "t1"},
    ]


def test_foreach_with_where_and_first(rows):
    got = rows(
        view({"forEach": "name.where(use = 'official').first()", "column": [col("f", "family")]}),
        PATIENTS,
    )
    assert got == [{"f": "Ames"}]


# --- unionAll (union) ---------------------------------------------------------------------------


def test_union_all_concatenates_branches_and_keeps_duplicates(rows):
    got = rows(
        view(
            {"column": [col("id", "id")]},
            {
                "unionAll": [
                    {"forEach": "telecom", "column": [col("v", "value"), col("own", "true")]},
                    {
                        "forEach": "contact.telecom",
                        "column": [col("v", "value"), col("own", "false")],
                    },
                    {
                        "forEach": "telecom.where(system = 'phone')",
                        "column": [col("v", "value"), col("own", "true")],
                    },
                ]
            },
        ),
        PATIENTS,
    )
    assert got == [
        {"id": "a", "v": "c1", "own": False},
        {"id": "a", "v": "e1", "own": True},
        {"id": "a", "v": "t1", "own": True},
        {"id": "a", "v": "t1", "own": True},
    ]


def test_union_inside_a_nested_select_and_empty_branches(rows):
    nested = view(
        {
            "unionAll": [
                {"forEach": "address", "column": [col("x", "city")]},
                {"select": [{"unionAll": [{"forEach": "name", "column": [col("x", "family")]}]}]},
            ]
        }
    )
    assert [r["x"] for r in rows(nested, PATIENTS)] == ["Ames", "Bergen", "Bo", "Old", "Oslo"]


def test_union_with_foreach_or_null_branch_gives_a_null_row(rows):
    got = rows(
        view(
            {"column": [col("id", "id")]},
            {
                "unionAll": [
                    {"forEachOrNull": "address", "column": [col("x", "city")]},
                    {"forEach": "name", "column": [col("x", "family")]},
                ]
            },
        ),
        [PATIENTS[2]],
    )
    assert got == [{"id": "c", "x": None}]


# --- repeat -----------------------------------------------------------------------------------

QUESTIONNAIRE = {
    "resourceType": "QuestionnaireResponse",
    "id": "q",
    "item": [
        {
            "linkId": "1",
            "item": [
                {
                    "linkId": "1.1",
                    "answer": [{"valueString": "yes", "item": [{"linkId": "1.1.1"}]}],
                },
                {"linkId": "1.2"},
            ],
        },
        {"linkId": "2"},
    ],
}


def qr_view(*selects: dict[str, Any]) -> dict[str, Any]:
    return {"resource": "QuestionnaireResponse", "select": list(selects)}


def test_repeat_walks_every_level_depth_first_with_row_index():
    table = views.run(
        qr_view(
            {"column": [col("id", "id")]},
            {"repeat": ["item"], "column": [col("link", "linkId"), col("i", "%rowIndex")]},
        ),
        [QUESTIONNAIRE],
    )
    assert [(r["link"], r["i"]) for r in table.to_pylist()] == [
        ("1", 0),
        ("1.1", 1),
        ("1.2", 2),
        ("2", 3),
    ]


def test_repeat_follows_several_paths(rows):
    got = rows(
        qr_view({"repeat": ["item", "answer.item"], "column": [col("link", "linkId")]}),
        [QUESTIONNAIRE],
    )
    assert [r["link"] for r in got] == ["1", "1.1", "1.1.1", "1.2", "2"]


def test_repeat_with_nested_foreach_or_null(rows):
    got = rows(
        qr_view(
            {
                "repeat": ["item"],
                "select": [
                    {"column": [col("link", "linkId")]},
                    {"forEachOrNull": "answer", "column": [col("a", "value.ofType(string)")]},
                ],
            }
        ),
        [QUESTIONNAIRE],
    )
    assert got == [
        {"link": "1", "a": None},
        {"link": "1.1", "a": "yes"},
        {"link": "1.2", "a": None},
        {"link": "2", "a": None},
    ]


def test_repeat_over_nothing_gives_no_rows(rows):
    assert (
        rows(
            qr_view(
                {"column": [col("id", "id")]},
                {"repeat": ["nothing"], "column": [col("x", "linkId")]},
            ),
            [QUESTIONNAIRE],
        )
        == []
    )


# --- %rowIndex (row_index) ---------------------------------------------------------------------


def test_row_index_is_zero_at_top_and_per_level_in_nested_iterations(rows):
    top = rows(view({"column": [col("id", "id"), col("i", "%rowIndex")]}), PATIENTS)
    assert {r["i"] for r in top} == {0}
    nested = rows(
        view(
            {
                "forEach": "name",
                "column": [col("n", "%rowIndex")],
                "select": [
                    {"forEach": "given", "column": [col("g", "%rowIndex"), col("v", "$this")]}
                ],
            }
        ),
        PATIENTS,
    )
    assert nested == [{"n": 0, "g": 0, "v": "Ann"}, {"n": 0, "g": 1, "v": "Bea"}]


def test_row_index_is_zero_in_the_null_row_and_inherited_by_union_branches(rows):
    got = rows(
        view(
            {"column": [col("id", "id")]},
            {"forEachOrNull": "address", "column": [col("i", "%rowIndex"), col("city", "city")]},
        ),
        PATIENTS[1:3],
    )
    assert got == [{"id": "b", "i": 0, "city": None}, {"id": "c", "i": 0, "city": None}]
    inherited = rows(
        view(
            {
                "forEach": "address",
                "select": [
                    {
                        "unionAll": [
                            {"column": [col("i", "%rowIndex")]},
                            {"forEach": "city", "column": [col("i", "%rowIndex + 10")]},
                        ]
                    }
                ],
            }
        ),
        PATIENTS[:1],
    )
    assert sorted(r["i"] for r in inherited) == [0, 1, 10, 10]


# --- where ----------------------------------------------------------------------------------------


def test_where_keeps_resources_whose_paths_are_all_true(rows):
    assert rows(view({"column": [col("id", "id")]}, where=[{"path": "active"}]), PATIENTS) == [
        {"id": "a"}
    ]
    both = view(
        {"column": [col("id", "id")]},
        where=[{"path": "active.exists()"}, {"path": "name.family.exists($this = 'Bo')"}],
    )
    assert rows(both, PATIENTS) == [{"id": "b"}]


def test_where_that_is_empty_drops_the_resource(rows):
    assert rows(
        view({"column": [col("id", "id")]}, where=[{"path": "active and gender = 'female'"}]),
        PATIENTS,
    ) == [{"id": "a"}]


def test_where_not_giving_a_boolean_is_an_error():
    with pytest.raises(ViewEvaluationError, match=r"where\[0\]\.path"):
        views.run(view({"column": [col("id", "id")]}, where=[{"path": "name.family"}]), PATIENTS)


# --- constant / constant_types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "path", "expected_ids"),
    [
        ("valueString", "Bo", "name.family contains %c", ["b"]),
        ("valueCode", "female", "gender = %c", ["a"]),
        ("valueBoolean", False, "active = %c", ["b"]),
        ("valueInteger", 2, "name.count() = %c", ["a"]),
        ("valuePositiveInt", 1, "name.count() = %c", ["b"]),
        ("valueUnsignedInt", 0, "name.count() = %c", ["c"]),
        ("valueInteger64", "2", "name.count() = %c", ["a"]),
        ("valueDecimal", 1.5, "name.count() > %c", ["a"]),
        ("valueId", "c", "id = %c", ["c"]),
        ("valueUri", "a", "id = %c", ["a"]),
        ("valueDate", "1950-01-01", "birthDate.empty() and %c.exists()", ["a", "b", "c"]),
    ],
)
def test_constants_of_each_type_are_substituted(rows, key, value, path, expected_ids):
    got = rows(
        view(
            {"column": [col("id", "id")]},
            where=[{"path": path}],
            constant=[{"name": "c", key: value}],
        ),
        PATIENTS,
    )
    assert [r["id"] for r in got] == expected_ids


def test_constant_in_a_column_and_in_foreach(rows):
    got = rows(
        view(
            {
                "forEach": "name.where(family = %fam)",
                "column": [col("given", "given.join(%sep)"), col("k", "%fam")],
            },
            constant=[{"name": "fam", "valueString": "Ames"}, {"name": "sep", "valueString": "+"}],
        ),
        PATIENTS,
    )
    assert got == [{"given": "Ann+Bea", "k": "Ames"}]


# --- validate: invalid views fail before any resource is read ------------------------------------------


class Exploding:
    """An iterable that fails the test if the engine reads it."""

    def __iter__(self):
        raise AssertionError("resources were read although the view is invalid")


@pytest.mark.parametrize(
    ("bad", "element"),
    [
        ({}, "resource"),
        ([], "must be a JSON object"),
        ({"resource": "Patient"}, "select"),
        ({"resource": "Patient", "select": []}, "select"),
        ({"resource": "Patinet", "select": [{"column": [col("id", "id")]}]}, "resource"),
        ({"resource": 5, "select": [{"column": [col("id", "id")]}]}, "resource"),
        (view({"forEach": "@@", "column": [col("id", "id")]}), r"select\[0\]\.forEach"),
        (view({"forEach": 1, "column": [col("id", "id")]}), r"select\[0\]\.forEach"),
        (
            view({"forEach": "name", "forEachOrNull": "name", "column": [col("id", "id")]}),
            r"select\[0\]\.forEachOrNull",
        ),
        (
            view({"forEach": "name", "repeat": ["name"], "column": [col("id", "id")]}),
            r"select\[0\]\.repeat",
        ),
        (view({"repeat": "item", "column": [col("id", "id")]}), r"select\[0\]\.repeat"),
        (
            view({"column": [col("id", "id"), col("x", "name.family"), col("y", "name.(")]}),
            r"select\[0\]\.column\[2\]\.path",
        ),
        (
            view({"column": [col("id", "id"), col("x", "name.frobnicate()")]}),
            r"select\[0\]\.column\[1\]\.path.*frobnicate",
        ),
        (
            view({"column": [col("id", "id"), col("x", "id", type="notAType")]}),
            r"select\[0\]\.column\[1\]\.type",
        ),
        (
            view({"column": [col("id", "id"), col("x", "id", collection="yes")]}),
            r"select\[0\]\.column\[1\]\.collection",
        ),
        (view({"column": [col("id", "id"), {"name": "x"}]}), r"select\[0\]\.column\[1\]\.path"),
        (view({"column": [{"path": "id"}]}), r"select\[0\]\.column\[0\]\.name"),
        (view({"column": [col("1id", "id")]}), r"select\[0\]\.column\[0\]\.name"),
        (view({"column": [col("_id", "id")]}), r"select\[0\]\.column\[0\]\.name"),
        (
            view({"column": [col("id", "id"), col("id", "gender")]}),
            r"select\[0\]\.column\[1\]\.path.*already defined",
        ),
        (
            view({"column": [col("id", "id")]}, {"column": [col("id", "gender")]}),
            r"select\[1\]\.column\[0\]\.path.*already defined",
        ),
        (
            view({"column": [col("id", "id")], "select": [{"column": [col("id", "id")]}]}),
            "already defined",
        ),
        (
            view({"unionAll": [{"column": [col("a", "id")]}, {"column": [col("b", "id")]}]}),
            r"select\[0\]\.unionAll\[1\]",
        ),
        (
            view(
                {
                    "unionAll": [
                        {"column": [col("a", "id"), col("b", "id")]},
                        {"column": [col("b", "id"), col("a", "id")]},
                    ]
                }
            ),
            r"unionAll\[1\]",
        ),
        (
            view(
                {
                    "unionAll": [
                        {"column": [col("a", "id", type="string")]},
                        {"column": [col("a", "active", type="boolean")]},
                    ]
                }
            ),
            r"unionAll\[1\]\.column\[0\]",
        ),
        (view({"unionAll": []}), r"select\[0\]\.unionAll"),
        (view({}), r"select\[0\]"),
        (view({"column": [col("id", "id")], "colum": []}), r"select\[0\]\.colum"),
        (view({"column": [col("id", "%nope")]}), r"select\[0\]\.column\[0\]\.path.*%nope"),
        (view({"column": [col("id", "id")]}, where=[{"path": "@@"}]), r"where\[0\]\.path"),
        (view({"column": [col("id", "id")]}, where=[{}]), r"where\[0\]"),
        (view({"column": [col("id", "id")]}, constant=[{"name": "c"}]), r"constant\[0\]"),
        (
            view({"column": [col("id", "id")]}, constant=[{"name": "c", "valueQuantity": {}}]),
            r"constant\[0\]\.valueQuantity",
        ),
        (
            view({"column": [col("id", "id")]}, constant=[{"name": "c", "valueInteger": "1"}]),
            r"constant\[0\]\.valueInteger",
        ),
        (
            view(
                {"column": [col("id", "id")]},
                constant=[{"name": "c", "valueString": "a"}, {"name": "c", "valueString": "b"}],
            ),
            r"constant\[1\]\.name",
        ),
        (view({"column": [col("id", "id")]}, name="bad name"), "name"),
    ],
)
def test_invalid_views_fail_before_reading_and_name_the_element(bad, element):
    with pytest.raises(ViewDefinitionError, match=element):
        views.run(bad, Exploding())
    with pytest.raises(ViewDefinitionError, match=element):
        views.compile_view(bad)
