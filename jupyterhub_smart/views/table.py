"""View rows to Arrow, with each column's declared FHIR type mapped to an Arrow type.

==============================================  ==================
FHIR type                                       Arrow type
==============================================  ==================
boolean                                         bool
integer, positiveInt, unsignedInt, integer64    int64
decimal                                         float64
every other primitive (string, code, id, uri,   string
date, dateTime, instant, time...)
a complex type (Quantity, Reference...)         string (its JSON)
==============================================  ==================

Dates and times stay ISO 8601 strings: FHIR allows partial dates (``1951``)
that no Arrow temporal type can hold without inventing a month and day; the
notebook layer (:mod:`jupyterhub_smart.notebook.flatten`) parses them into
timestamps where users expect that. Each field carries its FHIR type in the
field metadata (``fhir_type``).

A ``collection: true`` column is a list of that type. A column without a
declared type takes the type of its values (bool, int64, float64, string;
objects become JSON text), fixed on the first batch that has a value.

A value that does not fit its declared type (a resource with ``"active":
"yes"`` under ``type: boolean``) becomes null and is counted: the counts are in
the schema metadata (``jupyterhub_smart.warnings``, JSON ``{column: n}``) and
:func:`warnings_of` reads them back. Such a resource never stops a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from .definition import Column

__all__ = ["WARNINGS_KEY", "TableConverter", "arrow_type", "warnings_of"]

WARNINGS_KEY = b"jupyterhub_smart.warnings"

_INTEGER = {"integer", "positiveInt", "unsignedInt", "integer64"}


def arrow_type(type_name: str | None) -> pa.DataType | None:
    """The Arrow type of a FHIR type name (``None`` for an undeclared type)."""
    if type_name is None:
        return None
    if type_name == "boolean":
        return pa.bool_()
    if type_name in _INTEGER:
        return pa.int64()
    if type_name == "decimal":
        return pa.float64()
    return pa.string()


_BAD = object()


def _to_bool(value: Any) -> Any:
    return value if value is True or value is False else _BAD


def _to_int(value: Any) -> Any:
    cls = value.__class__
    if cls is int:
        return value
    if cls is Decimal and value == value.to_integral_value():
        return int(value)
    if cls is float and value.is_integer():
        return int(value)
    return _BAD


def _to_float(value: Any) -> Any:
    cls = value.__class__
    if cls is float:
        return value if math.isfinite(value) else _BAD
    if cls is int or cls is Decimal:
        return float(value)
    return _BAD


def _to_str(value: Any) -> Any:
    return value if value.__class__ is str else _BAD


def _to_json(value: Any) -> Any:
    if value.__class__ is dict or value.__class__ is list:
        return orjson.dumps(value, default=str).decode()
    return _BAD


def _to_any_str(value: Any) -> Any:
    cls = value.__class__
    if cls is str:
        return value
    if cls is dict or cls is list:
        return orjson.dumps(value, default=str).decode()
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _converter(type_name: str | None) -> Callable[[Any], Any]:
    if type_name == "boolean":
        return _to_bool
    if type_name in _INTEGER:
        return _to_int
    if type_name == "decimal":
        return _to_float
    if type_name is not None and type_name[:1].isupper():
        return _to_json
    return _to_str


def _infer(values: Sequence[Any]) -> pa.DataType | None:
    """The Arrow type undeclared values suggest (``None`` while all are null)."""
    kinds = set()
    for value in values:
        if value is None:
            continue
        if value.__class__ is list:
            for item in value:
                if item is not None:
                    kinds.add(item.__class__)
        else:
            kinds.add(value.__class__)
    if not kinds:
        return None
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float, Decimal}:
        return pa.float64()
    return pa.string()


def _loose(target: pa.DataType) -> Callable[[Any], Any]:
    """Conversion for an undeclared column once its type is fixed: never a warning."""
    if target == pa.bool_():
        return lambda v: v if v is True or v is False else None
    if target == pa.int64():
        return lambda v: v if v.__class__ is int else None
    if target == pa.float64():
        return lambda v: (
            float(v)
            if v.__class__ in (int, float, Decimal) and v is not True and v is not False
            else None
        )
    return _to_any_str


class TableConverter:
    """Turns batches of row tuples into Arrow record batches with one stable schema."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.warnings: dict[str, int] = {}
        self._types: list[pa.DataType | None] = [arrow_type(c.type) for c in self.columns]
        self._converters: list[Callable[[Any], Any] | None] = [
            _converter(c.type) if c.type is not None else None for c in self.columns
        ]

    def schema(self) -> pa.Schema:
        """The schema so far (undeclared columns not yet seen with a value are strings)."""
        fields = []
        for column, kind in zip(self.columns, self._types, strict=True):
            value_type = kind if kind is not None else pa.string()
            if column.collection:
                value_type = pa.list_(value_type)
            metadata = {b"fhir_type": (column.type or "").encode()}
            fields.append(pa.field(column.name, value_type, metadata=metadata))
        metadata = {WARNINGS_KEY: orjson.dumps(self.warnings)}
        return pa.schema(fields, metadata=metadata)

    def _column(self, i: int, values: Sequence[Any]) -> pa.Array:
        column = self.columns[i]
        convert = self._converters[i]
        if convert is None:
            inferred = _infer(values)
            if inferred is None:
                target = pa.list_(pa.string()) if column.collection else pa.string()
                return pa.nulls(len(values), type=target)
            self._types[i] = inferred
            convert = self._converters[i] = _loose(inferred)
            strict = False
        else:
            strict = True
        value_type = self._types[i] or pa.string()
        if strict and convert is _to_str and not column.collection:
            # the common case, all strings or nulls: Arrow checks the types itself, in C
            try:
                return pa.array(values, type=value_type)
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                pass  # some value is not a string: convert one by one and count
        bad = 0
        out: list[Any] = []
        append = out.append
        if column.collection:
            for value in values:
                if value is None:
                    append(None)
                    continue
                items = []
                for item in value:
                    converted = convert(item)
                    if converted is _BAD or (converted is None and item is not None):
                        bad += 1
                        converted = None
                    items.append(converted)
                append(items)
            if bad and strict:
                self.warnings[column.name] = self.warnings.get(column.name, 0) + bad
            return pa.array(out, type=pa.list_(value_type))
        for value in values:
            if value is None:
                append(None)
                continue
            converted = convert(value)
            if converted is _BAD:
                bad += 1
                converted = None
            append(converted)
        if bad and strict:
            self.warnings[column.name] = self.warnings.get(column.name, 0) + bad
        return pa.array(out, type=value_type)

    def batch(self, rows: Sequence[tuple[Any, ...]]) -> pa.RecordBatch:
        """One record batch of ``rows`` (tuples in column order)."""
        by_column = list(zip(*rows, strict=True)) if rows else [() for _ in self.columns]
        arrays = [self._column(i, values) for i, values in enumerate(by_column)]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema())

    def table(self, batches: Sequence[pa.RecordBatch]) -> pa.Table:
        """The batches as one table, every batch cast to the final schema, warnings attached."""
        schema = self.schema()
        cast = [b.cast(schema) if b.schema != schema else b for b in batches]
        if not cast:
            return schema.empty_table()
        return pa.Table.from_batches(cast, schema=schema)


def warnings_of(table: pa.Table | pa.RecordBatch | pa.Schema) -> dict[str, int]:
    """Per column, how many values did not fit their declared type and became null."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    raw = (schema.metadata or {}).get(WARNINGS_KEY)
    return dict(orjson.loads(raw)) if raw else {}
