"""The FHIRPath subset SQL on FHIR v2 requires, function by function and operator by operator.

Each expression is evaluated through a one-column view over one resource, the
way a view runner sees it. Expected values follow the FHIRPath specification
(empty-propagation, three-valued logic, singleton evaluation).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from jupyterhub_smart import views
from jupyterhub_smart.views import ViewDefinitionError, ViewEvaluationError

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "SBP"}],
        "text": "Systolic",
    },
    "subject": {"reference": "Patient/p1"},
    "encounter": {"reference": "https://ehr.example/fhir/Encounter/e1/_history/2"},
    "performer": [
        {"reference": "Practitioner/x"},
        {"reference": "#contained"},
        {"display": "no ref"},
    ],
    "effectiveDateTime": "2021-04-05T10:00:00+02:00",
    "valueQuantity": {"value": 120.5, "unit": "mmHg", "code": "mm[Hg]"},
    "extension": [
        {"url": "http://ex/ext/a", "valueString": "A"},
        {"url": "http://ex/ext/b", "extension": [{"url": "inner", "valueInteger": 3}]},
    ],
    "component": [
        {"code": {"coding": [{"code": "c1"}]}, "valueInteger": 7},
        {"code": {"coding": [{"code": "c2"}]}, "valueString": "seven"},
        {"code": {"coding": [{"code": "c3"}]}, "valueBoolean": False},
    ],
    "note": [{"text": "a"}, {"text": "b"}, {"text": "c"}],
}


def value(path: str, resource: dict[str, Any] | None = None, **column: Any) -> Any:
    resource = resource or OBSERVATION
    view = {
        "resource": resource["resourceType"],
        "select": [{"column": [{"name": "v", "path": path, **column}]}],
    }
    rows = views.run(view, [resource]).to_pylist()
    assert len(rows) == 1
    assert views.run(view, [resource], engine="auto").to_pylist() == rows  # Arrow where it can
    return rows[0]["v"]


# --- literals and navigation (basic, fhirpath) --------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("'text'", "text"),
        ("'it\\'s'", "it's"),
        ("42", 42),
        ("-3", -3),
        ("1.25", 1.25),
        ("true", True),
        ("false", False),
        ("{}", None),
        ("@2020-01-02", "2020-01-02"),
        ("@2020-01-02T10:00:00Z", "2020-01-02T10:00:00Z"),
        ("@T12:30", "12:30"),
        ("status", "final"),
        ("Observation.status", "final"),
        ("code.coding.code", "8480-6"),
        ("code.coding[0].system", "http://loinc.org"),
        ("note[1].text", "b"),
        ("note[5].text", None),
        ("`status`", "final"),
        ("nothing.here", None),
        ("code.coding.where(code = '8480-6').display", "SBP"),
        ("%resource.id", "o1"),
    ],
)
def test_literals_and_navigation(path, expected):
    assert value(path) == expected


def test_choice_type_navigation_and_oftype():
    assert value("value.ofType(Quantity).value") == 120.5
    assert value("value.ofType(Quantity).unit") == "mmHg"
    assert value("value.ofType(string)") is None
    assert value("value.unit") == "mmHg"
    assert value("effective.ofType(dateTime)") == "2021-04-05T10:00:00+02:00"
    assert value("effective.ofType(Period).start") is None
    assert value("component.value.ofType(integer)") == 7
    assert value("component.value.ofType(string)") == "seven"
    assert value("component.value.ofType(boolean)") is False
    assert value("component.value.ofType(FHIR.integer)") == 7
    assert value("component.value.ofType(System.Integer)") == 7
    assert value("component.value.count()") == 3
    assert value("component.where(value.ofType(integer) > 5).code.coding.code") == "c1"
    assert value("component.where(value is string).code.coding.code") == "c2"
    assert value("component.value.where($this is integer)") == 7
    assert value("(component.value as integer)") == 7
    assert value("Observation.ofType(Observation).id") == "o1"


# --- functions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("note.exists()", True),
        ("method.exists()", False),
        ("note.exists(text = 'b')", True),
        ("note.exists(text = 'z')", False),
        ("note.empty()", False),
        ("method.empty()", True),
        ("method.coding.empty()", True),
        ("note.first().text", "a"),
        ("note.text.first()", "a"),
        ("method.first()", None),
        ("note.last().text", "c"),
        ("note.text.join(',')", "a,b,c"),
        ("note.text.join()", "abc"),
        ("method.text.join(',')", ""),
        ("note.count()", 3),
        ("note.where(text != 'a').count()", 2),
        ("note.skip(1).first().text", "b"),
        ("note.take(2).text.join('')", "ab"),
        ("note.tail().text.join('')", "bc"),
        ("note.text.distinct().count()", 3),
        ("note.select(text).join('-')", "a-b-c"),
        ("status.not()", False),
        ("status.startsWith('fi')", True),
        ("status.length()", 5),
        ("status.upper()", "FINAL"),
        ("status.substring(1, 2)", "in"),
        ("iif(status = 'final', 'yes', 'no')", "yes"),
        ("note.text.all($this.length() = 1)", True),
        ("(1 | 2 | 2).count()", 2),
        ("(1).combine(1).count()", 2),
        ("status.toString()", "final"),
        ("'12'.toInteger() + 1", 13),
    ],
)
def test_functions(path, expected):
    assert value(path) == expected


def test_not_and_boolean_functions():
    assert value("(1 = 1).not()") is False
    assert value("method.exists().not()") is True
    assert value("{}.not()") is None


def test_extension_function():
    assert value("extension('http://ex/ext/a').value.ofType(string)") == "A"
    assert value("extension('http://ex/ext/b').extension('inner').value.ofType(integer)") == 3
    assert value("extension('http://ex/none').exists()") is False
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [{"url": "text", "valueString": "Asian"}],
            }
        ],
    }
    race = "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension('text').value.ofType(string)"
    assert value(race, patient) == "Asian"


def test_reference_and_resource_keys_match():
    assert value("getResourceKey()") == "o1"
    assert value("subject.getReferenceKey()") == "p1"
    assert value("subject.getReferenceKey(Patient)") == "p1"
    assert value("subject.getReferenceKey(Group)") is None
    assert value("encounter.getReferenceKey(Encounter)") == "e1"
    assert value("performer.getReferenceKey()", collection=True) == ["x"]
    patient_key = views.run(
        {
            "resource": "Patient",
            "select": [{"column": [{"name": "k", "path": "getResourceKey()"}]}],
        },
        [{"resourceType": "Patient", "id": "p1"}],
    ).to_pylist()[0]["k"]
    assert patient_key == value("subject.getReferenceKey(Patient)")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # a decimal stands for every value that rounds to it at its own precision
        ("1.0.lowBoundary()", 0.95),
        ("1.0.highBoundary()", 1.05),
        ("1.587.lowBoundary()", 1.5865),
        ("1.587.highBoundary()", 1.5875),
        ("(-1.587).lowBoundary()", -1.5875),
        ("(-1.587).highBoundary()", -1.5865),
        ("1.587.lowBoundary(2)", 1.58),
        ("1.587.highBoundary(2)", 1.59),
        ("value.ofType(Quantity).value.highBoundary()", 120.55),
        # dates: the first and last day of the period; leap years counted
        ("@2014.lowBoundary()", "2014-01-01"),
        ("@2014.highBoundary()", "2014-12-31"),
        ("@2016-02.highBoundary()", "2016-02-29"),
        ("@2100-02.highBoundary()", "2100-02-28"),
        # dateTimes: to the millisecond; without a zone, the earliest (+14:00) or latest (-12:00)
        ("@2014-01-01T08.lowBoundary()", "2014-01-01T08:00:00.000+14:00"),
        ("@2014-01-01T08:05-05:00.highBoundary()", "2014-01-01T08:05:59.999-05:00"),
        ("@2014-01-01T08:05:01.5Z.highBoundary()", "2014-01-01T08:05:01.599Z"),
        ("effective.ofType(dateTime).lowBoundary()", "2021-04-05T10:00:00.000+02:00"),
        ("@2014-01-01T08.lowBoundary(8)", "2014-01-01"),
        # times
        ("@T10:30.lowBoundary()", "10:30:00.000"),
        ("@T10:30.highBoundary()", "10:30:59.999"),
        ("@T10:30:00.25.highBoundary()", "10:30:00.259"),
    ],
)
def test_boundaries(path, expected):
    got = value(path)
    assert got == expected


def test_a_date_read_as_datetime_gets_datetime_boundaries():
    obs = {"resourceType": "Observation", "id": "o", "valueDateTime": "2010-10-10"}
    assert value("value.ofType(dateTime).lowBoundary()", obs) == "2010-10-10T00:00:00.000+14:00"
    assert value("value.ofType(dateTime).highBoundary()", obs) == "2010-10-10T23:59:59.999-12:00"
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1970-06"}
    assert value("birthDate.lowBoundary()", patient) == "1970-06-01"
    assert value("birthDate.highBoundary()", patient) == "1970-06-30"


def test_boundaries_of_a_period():
    encounter = {
        "resourceType": "Encounter",
        "id": "e",
        "period": {"start": "2020-01", "end": "2020-03-04"},
    }
    assert value("period.lowBoundary()", encounter) == "2020-01-01T00:00:00.000+14:00"
    assert value("period.highBoundary()", encounter) == "2020-03-04T23:59:59.999-12:00"


# --- operators: logic, comparison, arithmetic (logic, fhirpath, fhirpath_numbers) ------------------------

T, F, E = "true", "false", "{}"


@pytest.mark.parametrize(
    ("op", "table"),
    [
        (
            "and",
            {(T, T): True, (T, F): False, (T, E): None, (F, F): False, (F, E): False, (E, E): None},
        ),
        (
            "or",
            {(T, T): True, (T, F): True, (T, E): True, (F, F): False, (F, E): None, (E, E): None},
        ),
        (
            "xor",
            {(T, T): False, (T, F): True, (T, E): None, (F, F): False, (F, E): None, (E, E): None},
        ),
        (
            "implies",
            {
                (T, T): True,
                (T, F): False,
                (T, E): None,
                (F, T): True,
                (F, E): True,
                (E, T): True,
                (E, F): None,
                (E, E): None,
            },
        ),
    ],
)
def test_three_valued_logic(op, table):
    for (a, b), expected in table.items():
        assert value(f"({a}) {op} ({b})") == expected, (a, op, b)
        if op in ("and", "or", "xor"):
            assert value(f"({b}) {op} ({a})") == expected, (b, op, a)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("1 + 2", 3),
        ("5 - 7", -2),
        ("3 * 4", 12),
        ("7 / 2", 3.5),
        ("1 / 3 * 3 > 0.99", True),
        ("7 div 2", 3),
        ("7 mod 2", 1),
        ("5.5 mod 2", 1.5),
        ("0.1 + 0.2 = 0.3", True),
        ("0.1 + 0.2", 0.3),
        ("1 / 0", None),
        ("2 + {}", None),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("-(2 + 3)", -5),
        ("value.ofType(Quantity).value * 2", 241.0),
        ("'a' + 'b'", "ab"),
        ("'a' & {} & 'c'", "ac"),
        ("1 = 1.0", True),
        ("1 != 2", True),
        ("'a' = 'a'", True),
        ("{} = 1", None),
        ("2 > 1", True),
        ("2 >= 2", True),
        ("1 <= 0", False),
        ("'b' < 'a'", False),
        ("@2020-01-02 < @2020-02-01", True),
        ("@2020 < @2020-01-01", None),
        ("'A  b' ~ 'a b'", True),
        ("'a' !~ 'b'", True),
        ("'8480-6' in code.coding.code", True),
        ("code.coding.code contains 'x'", False),
        ("note.text.count() = 3 and status = 'final'", True),
        ("status = 'final' or nothing", True),
    ],
)
def test_operators(path, expected):
    assert value(path) == expected


def test_decimal_results_are_exact_before_becoming_float():
    assert value("0.1 + 0.2", type="decimal") == 0.3
    assert isinstance(value("1.0 * 2"), float)
    assert Decimal("0.3") == Decimal(repr(value("0.1 + 0.2")))


def test_comparing_incompatible_values_is_an_error():
    with pytest.raises(ViewEvaluationError):
        value("status > 1")


def test_unknown_function_and_unsupported_syntax_are_view_errors():
    for path in (
        "status.frob()",
        "note.where()",
        "status.join(1, 2, 3)",
        "$index",
        "1 +",
        "status..x",
    ):
        with pytest.raises(ViewDefinitionError, match=r"select\[0\]\.column\[0\]\.path"):
            value(path)
