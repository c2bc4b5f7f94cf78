"""Flattening: fixed typed columns, nulls for missing elements, blood-pressure components as rows."""

from __future__ import annotations

from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from jupyterhub_smart.notebook.flatten import COLUMNS, TableBuilder, columns_for

LOINC = "http://loinc.org"


def hr(oid: str, value: Any, when: str = "2024-01-02T10:00:00-05:00") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "beats/minute"},
    }


BP = {
    "resourceType": "Observation",
    "id": "bp1",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "85354-9"}], "text": "Blood pressure"},
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2024-01-02T10:00:00Z"},
    "component": [
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 120, "unit": "mmHg"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 80, "unit": "mmHg"}},
    ],
}  # fmt: skip


def frame(resource_type: str, resources: list[Any], **kw: Any) -> pd.DataFrame:
    builder = TableBuilder(resource_type, **kw)
    builder.add(resources)
    return builder.to_pandas()


def test_observation_columns_and_types() -> None:
    df = frame("Observation", [hr("a", 72), hr("b", 80.5, "2024-01-02T16:00:00+01:00")])
    assert list(df.columns) == [name for name, _ in columns_for("Observation")]
    assert str(df["effective"].dtype) == "datetime64[us, UTC]"
    assert df["effective"].tolist() == [
        pd.Timestamp("2024-01-02T15:00:00Z"),
        pd.Timestamp("2024-01-02T15:00:00Z"),
    ]
    assert df["value"].dtype == "float64" and df["value"].tolist() == [72.0, 80.5]
    assert df.loc[0, "code"] == "8867-4" and df.loc[0, "display"] == "Heart rate"
    assert df.loc[0, "unit"] == "beats/minute" and df.loc[0, "category"] == "vital-signs"
    assert df.loc[0, "subject"] == "Patient/p1" and df.loc[0, "status"] == "final"


def test_blood_pressure_components_become_rows() -> None:
    df = frame("Observation", [BP])
    assert df["code"].tolist() == ["8480-6", "8462-4"]
    assert df["value"].tolist() == [120.0, 80.0]
    assert df["panel_code"].tolist() == ["85354-9", "85354-9"]
    assert df["id"].tolist() == ["bp1", "bp1"]
    wide = df.pivot_table(index="effective", columns="code", values="value")
    assert wide.loc[pd.Timestamp("2024-01-02T10:00:00Z"), "8480-6"] == 120.0


def test_empty_search_keeps_every_typed_column() -> None:
    for resource_type in [*COLUMNS, "Immunization"]:
        df = frame(resource_type, [])
        assert df.empty
        assert list(df.columns) == [name for name, _ in columns_for(resource_type)]
    assert str(frame("Observation", [])["effective"].dtype) == "datetime64[us, UTC]"


@pytest.mark.parametrize("resource_type", [*COLUMNS, "Immunization"])
def test_missing_and_malformed_elements_are_nulls(resource_type: str) -> None:
    odd: list[Any] = [
        {"resourceType": resource_type},
        {"resourceType": resource_type, "id": 7, "code": "x", "subject": [], "category": {},
         "valueQuantity": "high", "effectiveDateTime": 2024, "name": "Smith", "identifier": {},
         "period": [], "component": "bp", "birthDate": "not a date", "meta": []},
    ]  # fmt: skip
    df = frame(resource_type, odd)
    assert len(df) == 2
    assert list(df.columns) == [name for name, _ in columns_for(resource_type)]
    assert df["id"].isna().all()


def test_observation_value_kinds() -> None:
    base = hr("x", 1)
    del base["valueQuantity"]
    kinds = [
        {**base, "valueString": "positive"},
        {**base, "valueCodeableConcept": {"coding": [{"code": "L", "display": "Low"}]}},
        {**base, "valueBoolean": True},
        {**base, "valueInteger": 3},
        {**base, "valueQuantity": {"value": True}},
        {**base, "valueQuantity": {"value": float("nan")}},
        base,
    ]
    df = frame("Observation", kinds)
    assert df["value_text"].tolist()[:3] == ["positive", "Low", "true"]
    assert df["value"].tolist()[3] == 3.0
    assert df["value"].isna().tolist() == [True, True, True, False, True, True, True]


def test_partial_and_bad_dates() -> None:
    df = frame(
        "Observation",
        [
            hr("a", 1, "2021"),
            hr("b", 1, "2021-04"),
            hr("c", 1, "2021-04-27"),
            hr("d", 1, "yesterday"),
        ],
    )
    assert df["effective"].tolist()[:3] == [
        pd.Timestamp("2021-01-01T00:00:00Z"),
        pd.Timestamp("2021-04-01T00:00:00Z"),
        pd.Timestamp("2021-04-27T00:00:00Z"),
    ]
    assert pd.isna(df["effective"].iloc[3])
    assert df.attrs["warnings"] == {"effective": 1}  # "yesterday" is counted, not guessed


def test_raw_column_is_opt_in() -> None:
    assert "raw" not in frame("Observation", [BP]).columns
    df = frame("Observation", [BP], raw=True)
    assert orjson.loads(df["raw"].iloc[0])["id"] == "bp1"
    assert df["raw"].iloc[0] == df["raw"].iloc[1]


def test_patient_columns() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"use": "nickname", "given": ["Bo"]}, {"use": "official", "family": "Ng", "given": ["Bao", "An"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
        "identifier": [{"value": "other"}, {"type": {"coding": [{"code": "MR"}]}, "value": "MRN-1"}],
        "active": True,
    }  # fmt: skip
    row = frame("Patient", [patient]).iloc[0]
    assert (row["family"], row["given"], row["mrn"]) == ("Ng", "Bao An", "MRN-1")
    assert row["birth_date"] == pd.Timestamp("1980-02-29") and bool(row["active"])


def test_arrow_table_has_the_same_columns() -> None:
    builder = TableBuilder("Observation")
    builder.add([hr("a", 1), BP])
    table = builder.to_arrow()
    assert table.schema.field("effective").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("value").type == pa.float64()
    assert table.num_rows == 3
