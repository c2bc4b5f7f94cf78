"""FHIR resources to typed columns, built in bulk.

Each resource type has a fixed list of columns with a fixed type, so a
DataFrame has the same shape whether the search found 0, 1 or 100,000
resources and whether or not they carry every element: a missing element is a
null in its column, never a missing column and never an exception.

Speed and memory: pages are parsed with orjson, each resource is reduced at
once to a tuple of plain values (its JSON dict is then free to go), and the
columns are converted to typed arrays once at the end (one ``to_datetime``
over all timestamps, not one per row). Repeated strings (codes, units,
references) are interned so that 100,000 copies of ``"Patient/123"`` cost one.

Observation rows: **one row per value**. A plain Observation is one row. A
panel with ``component`` values (blood pressure) becomes one row per
component: ``code``/``display``/``value``/``unit`` are the component's
(systolic 8480-6, diastolic 8462-4), ``panel_code`` is the panel's code
(85354-9), ``id`` and ``effective`` are shared, so
``df.pivot_table(index="effective", columns="code", values="value")`` puts
systolic and diastolic side by side. An Observation with neither a value nor
components still gives one row (``value`` null) so that nothing disappears.

Timestamps (``effective``, ``onset``, ``start``...) are timezone-aware UTC
(FHIR dateTimes carry their own offsets; UTC makes them comparable). Partial
dates (``2021``, ``2021-04``) become the start of the period; unreadable ones
become NaT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["COLUMNS", "TableBuilder", "columns_for"]

Kind = Literal["str", "float", "datetime", "date", "bool"]
Row = tuple[Any, ...]


def _d(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (malformed resources do not raise)."""
    return value if value.__class__ is dict else _EMPTY


_EMPTY: dict[str, Any] = {}


def _first(value: Any) -> dict[str, Any]:
    """The first element of a JSON array as an object (``{}`` if none)."""
    if value.__class__ is list and value:
        first = value[0]
        return first if first.__class__ is dict else _EMPTY
    return _EMPTY


def _s(value: Any) -> str | None:
    return value if value.__class__ is str else None


def _f(value: Any) -> float | None:
    cls = value.__class__
    if cls is int or cls is float:
        number = float(value)
        return number if math.isfinite(number) else None
    return None  # includes bool (a subclass of int, but not a measurement)


Interner = Callable[[Any], "str | None"]


def make_interner() -> Interner:
    """A function sharing one string object per distinct value (non-strings become None).

    100,000 copies of ``"Patient/123"`` then cost one string, and pandas/Arrow
    conversion reads fewer distinct objects.
    """
    seen: dict[str, str] = {}
    setdefault = seen.setdefault

    def intern(value: Any) -> str | None:
        return setdefault(value, value) if value.__class__ is str else None

    return intern


def _coding(concept: Any) -> tuple[Any, Any, Any]:
    """``(system, code, display)`` of a CodeableConcept's first coding (display falls back to text)."""
    if concept.__class__ is not dict:
        return None, None, None
    coding = _first(concept.get("coding"))
    return coding.get("system"), coding.get("code"), coding.get("display") or concept.get("text")


def _reference(value: Any) -> Any:
    return value.get("reference") if value.__class__ is dict else None


# --- per-type row functions: resource -> iterable of tuples in COLUMNS order ------------

OBSERVATION_COLUMNS: list[tuple[str, Kind]] = [
    ("id", "str"),
    ("subject", "str"),
    ("encounter", "str"),
    ("effective", "datetime"),
    ("code_system", "str"),
    ("code", "str"),
    ("display", "str"),
    ("value", "float"),
    ("unit", "str"),
    ("value_text", "str"),
    ("category", "str"),
    ("status", "str"),
    ("panel_code", "str"),
]


def _value(element: dict[str, Any]) -> tuple[float | None, Any, str | None]:
    """``(number, unit, text)`` of an Observation or component ``value[x]``."""
    quantity = element.get("valueQuantity")
    if quantity is not None:
        if quantity.__class__ is not dict:
            return None, None, None
        return _f(quantity.get("value")), quantity.get("unit") or quantity.get("code"), None
    if "valueInteger" in element:
        return _f(element["valueInteger"]), None, None
    if "valueString" in element:
        return None, None, _s(element["valueString"])
    if "valueCodeableConcept" in element:
        _, code, display = _coding(element["valueCodeableConcept"])
        return None, None, _s(display) or _s(code)
    if "valueBoolean" in element:
        flag = element["valueBoolean"]
        return None, None, ("true" if flag else "false") if isinstance(flag, bool) else None
    return None, None, None


def observation_rows(resource: dict[str, Any], i: Interner) -> Iterable[Row]:
    """One row per value (components of a panel become rows; see the module docstring).

    Written out longhand (local lookups, no helper calls on the common path):
    this runs once per Observation, 100,000 times for a long series.
    """
    get = resource.get
    rid = get("id")
    if rid.__class__ is not str:
        rid = None
    ref = get("subject")
    subject = i(ref.get("reference")) if ref.__class__ is dict else None
    ref = get("encounter")
    encounter = ref.get("reference") if ref.__class__ is dict else None
    if encounter.__class__ is not str:
        encounter = None
    effective = get("effectiveDateTime") or get("effectiveInstant")
    if effective is None:
        period = get("effectivePeriod")
        effective = period.get("start") if period.__class__ is dict else None
    if effective.__class__ is not str:
        effective = None
    system, code, display = _coding(get("code"))
    category = None
    categories = get("category")
    if categories.__class__ is list and categories:
        first = categories[0]
        codings = first.get("coding") if first.__class__ is dict else None
        if codings.__class__ is list and codings and codings[0].__class__ is dict:
            category = i(codings[0].get("code"))
    status = i(get("status"))
    quantity = get("valueQuantity")
    if quantity.__class__ is dict:  # the common case
        value: Any = quantity.get("value")
        kind = value.__class__
        number = float(value) if (kind is int or kind is float) and math.isfinite(value) else None
        unit, text = quantity.get("unit") or quantity.get("code"), None
    else:
        number, unit, text = _value(resource)
    components = resource.get("component")
    has_value = number is not None or text is not None
    if components is None:  # the common case: one value, one row
        return (
            (rid, subject, encounter, effective, i(system), i(code), i(display), number,
             i(unit), text, category, status, None),
        )  # fmt: skip
    rows: list[Row] = []
    if has_value or not (isinstance(components, list) and components):
        rows.append(
            (rid, subject, encounter, effective, i(system), i(code), i(display), number,
             i(unit), text, category, status, None)
        )  # fmt: skip
    if isinstance(components, list):
        panel = i(code)
        for component in components:
            component = _d(component)
            c_system, c_code, c_display = _coding(component.get("code"))
            c_number, c_unit, c_text = _value(component)
            rows.append(
                (rid, subject, encounter, effective, i(c_system), i(c_code), i(c_display),
                 c_number, i(c_unit), c_text, category, status, panel)
            )  # fmt: skip
    return rows


PATIENT_COLUMNS: list[tuple[str, Kind]] = [
    ("id", "str"),
    ("family", "str"),
    ("given", "str"),
    ("gender", "str"),
    ("birth_date", "date"),
    ("mrn", "str"),
    ("active", "bool"),
]


def mrn_of(resource: dict[str, Any]) -> str | None:
    """The medical record number: the identifier typed ``MR`` (v2-0203), else the first one."""
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return None
    for identifier in identifiers:
        identifier = _d(identifier)
        for coding in _d(identifier.get("type")).get("coding") or []:
            if _d(coding).get("code") == "MR":
                return _s(identifier.get("value"))
    return _s(_first(identifiers).get("value"))


def official_name(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(family, given)`` of the official name (else the first one); given names space-joined."""
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    if not names:
        return None, None
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = name.get("given")
    given_text = (
        " ".join(g for g in given if isinstance(g, str)) or None
        if isinstance(given, list)
        else None
    )
    return _s(name.get("family")), given_text


def patient_rows(resource: dict[str, Any], i: Interner) -> Iterable[Row]:
    family, given = official_name(resource)
    active = resource.get("active")
    return [
        (
            _s(resource.get("id")),
            family,
            given,
            i(resource.get("gender")),
            _s(resource.get("birthDate")),
            mrn_of(resource),
            active if isinstance(active, bool) else None,
        )
    ]


CONDITION_COLUMNS: list[tuple[str, Kind]] = [
    ("id", "str"),
    ("subject", "str"),
    ("encounter", "str"),
    ("code_system", "str"),
    ("code", "str"),
    ("display", "str"),
    ("clinical_status", "str"),
    ("verification_status", "str"),
    ("category", "str"),
    ("onset", "datetime"),
    ("recorded", "datetime"),
]


def condition_rows(resource: dict[str, Any], i: Interner) -> Iterable[Row]:
    system, code, display = _coding(resource.get("code"))
    onset = resource.get("onsetDateTime") or _d(resource.get("onsetPeriod")).get("start")
    return [
        (
            _s(resource.get("id")),
            i(_reference(resource.get("subject"))),
            _s(_reference(resource.get("encounter"))),
            i(system),
            i(code),
            i(display),
            i(_coding(resource.get("clinicalStatus"))[1]),
            i(_coding(resource.get("verificationStatus"))[1]),
            i(_coding(_first(resource.get("category")))[1]),
            _s(onset),
            _s(resource.get("recordedDate")),
        )
    ]


ENCOUNTER_COLUMNS: list[tuple[str, Kind]] = [
    ("id", "str"),
    ("subject", "str"),
    ("status", "str"),
    ("class_code", "str"),
    ("type_code", "str"),
    ("type_display", "str"),
    ("start", "datetime"),
    ("end", "datetime"),
]


def encounter_rows(resource: dict[str, Any], i: Interner) -> Iterable[Row]:
    _, type_code, type_display = _coding(_first(resource.get("type")))
    period = _d(resource.get("period"))
    return [
        (
            _s(resource.get("id")),
            i(_reference(resource.get("subject"))),
            i(resource.get("status")),
            i(_d(resource.get("class")).get("code")),
            i(type_code),
            i(type_display),
            _s(period.get("start")),
            _s(period.get("end")),
        )
    ]


MEDICATION_REQUEST_COLUMNS: list[tuple[str, Kind]] = [
    ("id", "str"),
    ("subject", "str"),
    ("status", "str"),
    ("intent", "str"),
    ("code_system", "str"),
    ("code", "str"),
    ("display", "str"),
    ("medication_reference", "str"),
    ("authored", "datetime"),
    ("requester", "str"),
    ("dosage", "str"),
]


def medication_request_rows(resource: dict[str, Any], i: Interner) -> Iterable[Row]:
    system, code, display = _coding(resource.get("medicationCodeableConcept"))
    return [
        (
            _s(resource.get("id")),
            i(_reference(resource.get("subject"))),
            i(resource.get("status")),
            i(resource.get("intent")),
            i(system),
            i(code),
            i(display),
            _s(_reference(resource.get("medicationReference"))),
            _s(resource.get("authoredOn")),
            i(_reference(resource.get("requester"))),
            _s(_first(resource.get("dosageInstruction")).get("text")),
        )
    ]


GENERIC_COLUMNS: list[tuple[str, Kind]] = [
    ("id", "str"),
    ("resource_type", "str"),
    ("last_updated", "datetime"),
]


def generic_rows(resource: dict[str, Any], i: Interner) -> Iterable[Row]:
    return [
        (
            _s(resource.get("id")),
            i(resource.get("resourceType")),
            _s(_d(resource.get("meta")).get("lastUpdated")),
        )
    ]


RowFunction = Callable[[dict[str, Any], Interner], Iterable[Row]]

#: Columns and row function per resource type; other types get the generic columns.
COLUMNS: dict[str, tuple[list[tuple[str, Kind]], RowFunction]] = {
    "Observation": (OBSERVATION_COLUMNS, observation_rows),
    "Patient": (PATIENT_COLUMNS, patient_rows),
    "Condition": (CONDITION_COLUMNS, condition_rows),
    "Encounter": (ENCOUNTER_COLUMNS, encounter_rows),
    "MedicationRequest": (MEDICATION_REQUEST_COLUMNS, medication_request_rows),
}


def columns_for(resource_type: str) -> list[tuple[str, Kind]]:
    """The columns (name, kind) a frame of ``resource_type`` has."""
    return COLUMNS.get(resource_type, (GENERIC_COLUMNS, generic_rows))[0]


class TableBuilder:
    """Accumulates rows of one resource type; converts to pandas or Arrow once, at the end.

    ``raw=True`` adds a ``raw`` column holding each resource's JSON text (for
    elements the typed columns do not cover); it costs a re-serialisation per
    resource, so it is opt-in.
    """

    def __init__(self, resource_type: str, *, raw: bool = False) -> None:
        self.resource_type = resource_type
        columns, self._row_fn = COLUMNS.get(resource_type, (GENERIC_COLUMNS, generic_rows))
        self.columns: list[tuple[str, Kind]] = list(columns)
        if raw:
            self.columns.append(("raw", "str"))
        self._raw = raw
        self._rows: list[Row] = []
        self._intern = make_interner()

    def add(self, resources: Iterable[dict[str, Any]]) -> int:
        """Add resources (of this builder's type); returns how many resources were added."""
        rows, row_fn, intern = self._rows, self._row_fn, self._intern
        extend = rows.extend
        added = 0
        if self._raw:
            for resource in resources:
                text = orjson.dumps(resource).decode()
                extend((*r, text) for r in row_fn(resource, intern))
                added += 1
        else:
            for resource in resources:
                extend(row_fn(resource, intern))
                added += 1
        return added

    def __len__(self) -> int:
        return len(self._rows)

    def _column_values(self) -> list[tuple[Any, ...]]:
        if not self._rows:
            return [() for _ in self.columns]
        values = list(zip(*self._rows, strict=True))
        self._rows = []  # the typed columns replace the tuples; free them early
        return values

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table: nullable strings, float64, UTC timestamps, date32."""
        import pandas as pd
        import pyarrow as pa

        arrays = []
        for (_name, kind), values in zip(self.columns, self._column_values(), strict=True):
            if kind == "str":
                arrays.append(pa.array(values, type=pa.string()))
            elif kind == "float":
                arrays.append(pa.array(values, type=pa.float64()))
            elif kind == "bool":
                arrays.append(pa.array(values, type=pa.bool_()))
            else:
                # pandas parses ISO 8601 with offsets and partial dates; arrow-backed input
                # makes that several times faster than a Series of Python objects.
                text = pa.array(values, type=pa.string()).to_pandas()
                if kind == "datetime":
                    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
                    target = pa.timestamp("us", tz="UTC")
                else:
                    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
                    target = pa.timestamp("us")
                array = pa.Array.from_pandas(parsed).cast(target)
                arrays.append(array.cast(pa.date32()) if kind == "date" else array)
        return pa.Table.from_arrays(arrays, names=[name for name, _ in self.columns])

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame with one typed column per entry of :attr:`columns` (empty if no rows).

        Strings are ``string[pyarrow]`` (missing = ``pd.NA``), numbers float64
        (missing = NaN), timestamps ``datetime64[us, UTC]`` (missing = NaT),
        dates ``datetime64`` without a zone, flags ``boolean``.
        """
        import pandas as pd
        import pyarrow as pa

        mapping = {pa.string(): pd.StringDtype("pyarrow"), pa.bool_(): pd.BooleanDtype()}
        return self.to_arrow().to_pandas(types_mapper=mapping.get, date_as_object=False)
