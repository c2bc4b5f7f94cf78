"""The built-in views: valid, typed and described, shipped as package data, one per common type."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from jupyterhub_smart import views
from jupyterhub_smart.views import builtin

REQUIRED = {
    "Patient", "Observation", "Condition", "Encounter", "MedicationRequest",
    "MedicationAdministration", "Procedure", "Immunization", "AllergyIntolerance",
    "DiagnosticReport", "DocumentReference",
}  # fmt: skip


def test_every_required_type_has_a_builtin_view_file_in_the_package():
    assert set(builtin.names()) >= REQUIRED
    folder = resources.files("jupyterhub_smart.views.builtin")
    for name in REQUIRED:
        assert folder.joinpath(f"{name}.json").is_file()


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_builtin_view_is_valid_typed_and_described(name):
    view = builtin.load(name)
    compiled = views.compile_view(view)
    assert compiled.resource == name
    assert re.fullmatch(r"[a-z_]+", view["name"])
    assert compiled.columns[0].name == "id"
    for column in compiled.columns:
        assert column.type, column.name
        assert column.description, column.name


def test_load_returns_a_copy_and_unknown_names_fail():
    builtin.load("Patient")["select"].clear()
    assert builtin.load("Patient")["select"]
    with pytest.raises(KeyError, match="built-in views: AllergyIntolerance"):
        builtin.load("Nope")


def test_types_without_a_builtin_view_get_the_generic_one():
    view = builtin.for_type("Goal")
    table = views.run(
        view, [{"resourceType": "Goal", "id": "g", "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}]
    )
    assert table.to_pylist() == [
        {"id": "g", "resource_type": "Goal", "last_updated": "2024-01-01T00:00:00Z"}
    ]


def test_document_reference_view_reads_no_attachment_data():
    doc = {
        "resourceType": "DocumentReference",
        "id": "d",
        "status": "current",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": "aGVsbG8=",
                    "size": 5,
                    "title": "Note",
                }
            }
        ],
    }
    row = views.run(builtin.load("DocumentReference"), [doc]).to_pylist()[0]
    assert row["content_type"] == "text/plain" and row["size"] == 5 and row["title"] == "Note"
    assert "aGVsbG8=" not in repr(row)
    assert not any(
        "data" in c["path"]
        for s in builtin.load("DocumentReference")["select"]
        for c in s["column"]
    )


def test_observation_view_gives_one_row_per_value():
    bp = {
        "resourceType": "Observation",
        "id": "bp",
        "code": {"coding": [{"code": "85354-9"}]},
        "component": [
            {
                "code": {"coding": [{"code": "8480-6"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg"},
            },
            {
                "code": {"coding": [{"code": "8462-4"}]},
                "valueQuantity": {"value": 80, "unit": "mmHg"},
            },
        ],
    }
    empty = {"resourceType": "Observation", "id": "e", "code": {"coding": [{"code": "x"}]}}
    rows = views.run(builtin.load("Observation"), [bp, empty]).to_pylist()
    assert [(r["id"], r["code"], r["value"], r["panel_code"]) for r in rows] == [
        ("bp", "8480-6", 120.0, "85354-9"),
        ("bp", "8462-4", 80.0, "85354-9"),
        ("e", "x", None, None),
    ]


def test_the_docs_tables_list_every_column_of_every_builtin_view():
    """The views page's tables come from the JSON files (docs/_hooks/builtin_views.py)."""
    import importlib.util
    from pathlib import Path

    hook = Path(__file__).resolve().parents[2] / "docs" / "_hooks" / "builtin_views.py"
    spec = importlib.util.spec_from_file_location("builtin_views_hook", hook)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.on_page_markdown("before\n<!-- builtin-views -->\nafter")
    assert "<!-- builtin-views -->" not in page
    for name in builtin.names():
        assert f"### {name}\n" in page
        for column in views.compile_view(builtin.load(name)).columns:
            assert f"| `{column.name}` | {column.type}" in page, (name, column.name)
