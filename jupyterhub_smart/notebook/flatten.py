"""FHIR search results to typed columns, through SQL on FHIR views.

Each resource type is flattened by a ViewDefinition: the built-in view of the
type (:mod:`jupyterhub_smart.views.builtin`, readable JSON files), the generic
view (``id``, ``resource_type``, ``last_updated``) for a type without one, or
the researcher's own (``search(...).to_pandas(view=...)``: a dict, a path to a
JSON file, or a built-in name). The columns are the view's, in its order, with
its declared types, so a DataFrame has the same shape whether the search found
0, 1 or 100,000 resources and whether or not they carry every element: a
missing element is a null in its column, never a missing column and never an
exception. A value of the wrong JSON type is a null too, counted in the
table's metadata (:func:`jupyterhub_smart.views.warnings_of`).

Observation rows (built-in view): **one row per value**. A plain Observation
is one row. A panel with ``component`` values (blood pressure) becomes one row
per component: ``code``/``display``/``value``/``unit`` are the component's
(systolic 8480-6, diastolic 8462-4), ``panel_code`` is the panel's code
(85354-9), ``id`` and ``effective`` are shared, so
``df.pivot_table(index="effective", columns="code", values="value")`` puts
systolic and diastolic side by side. An Observation with neither a value nor
components still gives one row (``value`` null) so that nothing disappears.

Types: FHIR ``dateTime``/``instant`` columns become timezone-aware UTC
timestamps (FHIR dateTimes carry their own offsets; UTC makes them
comparable), ``date`` columns dates; partial dates (``2021``, ``2021-04``)
become the start of the period and unreadable ones NaT. ``decimal`` is
float64, ``integer`` int64, ``boolean`` boolean, everything else a string.

Speed: each view is compiled once (FHIRPath to Python closures, see
:mod:`jupyterhub_smart.views.compiler`); each resource is reduced at once to
row tuples (its JSON dict is then free to go), and columns become typed
arrays once at the end (one ``to_datetime`` over all timestamps). Pages the
Arrow engine reads (:meth:`TableBuilder.add_arrow`) have their dates parsed
as they come instead, while the next page is on its way, so that the end of a
search does not wait for it (the parse is per value: the same result).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from jupyterhub_smart.views import CompiledView, compile_view
from jupyterhub_smart.views import builtin as builtin_views

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from jupyterhub_smart.views.table import TableConverter

__all__ = ["COLUMNS", "TableBuilder", "ViewSpec", "columns_for", "resolve_view"]

Kind = Literal["str", "float", "int", "datetime", "date", "bool", "list"]

#: What ``view=`` accepts: a ViewDefinition dict, a path to its JSON file, or a built-in name.
ViewSpec = Mapping[str, Any] | str | Path


def _kind(type_name: str | None, collection: bool) -> Kind:
    if collection:
        return "list"
    if type_name in ("dateTime", "instant"):
        return "datetime"
    if type_name == "date":
        return "date"
    if type_name == "decimal":
        return "float"
    if type_name in ("integer", "positiveInt", "unsignedInt", "integer64"):
        return "int"
    if type_name == "boolean":
        return "bool"
    return "str"


@functools.cache
def _builtin(resource_type: str) -> CompiledView:
    return compile_view(builtin_views.for_type(resource_type))


def resolve_view(resource_type: str, view: ViewSpec | None = None) -> CompiledView:
    """The compiled view for a search of ``resource_type``: ``view`` if given, else the built-in.

    Raises :class:`~jupyterhub_smart.views.ViewDefinitionError` for an invalid
    view and ``ValueError`` for a view of another resource type or a path
    that is neither a file nor a built-in name.
    """
    if view is None:
        return _builtin(resource_type)
    if isinstance(view, Path | str):
        text = str(view)
        if text in builtin_views.names():
            compiled = _builtin(text)
        elif Path(text).is_file():
            compiled = compile_view(orjson.loads(Path(text).read_bytes()))
        else:
            raise ValueError(
                f"view={text!r}: no such file, and not a built-in view "
                f"({', '.join(builtin_views.names())})"
            )
    else:
        compiled = compile_view(view)
    if compiled.resource != resource_type:
        raise ValueError(
            f"the view is of {compiled.resource} resources but the search is for {resource_type}"
        )
    return compiled


def columns_for(resource_type: str, view: ViewSpec | None = None) -> list[tuple[str, Kind]]:
    """The columns (name, kind) a frame of ``resource_type`` has."""
    compiled = resolve_view(resource_type, view)
    return [(c.name, _kind(c.type, c.collection)) for c in compiled.columns]


class _Columns(Mapping[str, "list[tuple[str, Kind]]"]):
    """``COLUMNS[type]``: the columns of each type that has a built-in view."""

    def __getitem__(self, key: str) -> list[tuple[str, Kind]]:
        if key not in builtin_views.names():
            raise KeyError(key)
        return columns_for(key)

    def __iter__(self) -> Any:
        return iter(builtin_views.names())

    def __len__(self) -> int:
        return len(builtin_views.names())


#: Columns per resource type with a built-in view; other types get the generic columns.
COLUMNS: Mapping[str, list[tuple[str, Kind]]] = _Columns()


def _parse_dates(array: pa.Array | pa.ChunkedArray, kind: Kind) -> tuple[pa.Array, int]:
    """A text column of ``datetime`` or ``date`` kind parsed; and how many texts were no date.

    pandas parses ISO 8601 with offsets and partial dates; arrow-backed input
    makes that several times faster than a Series of Python objects.
    """
    import pandas as pd
    import pyarrow as pa

    text = array.to_pandas()
    if kind == "datetime":
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        result = pa.Array.from_pandas(parsed).cast(pa.timestamp("us", tz="UTC"))
    else:
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
        result = pa.Array.from_pandas(parsed).cast(pa.timestamp("us")).cast(pa.date32())
    return result, int((parsed.isna() & text.notna()).sum())


class TableBuilder:
    """Accumulates the view's rows for resources of one type; converts once, at the end.

    ``raw=True`` adds a ``raw`` column holding each resource's JSON text (for
    elements the view does not cover); it costs a re-serialisation per
    resource, so it is opt-in.
    """

    def __init__(
        self, resource_type: str, *, raw: bool = False, view: ViewSpec | None = None
    ) -> None:
        self.resource_type = resource_type
        self.view = resolve_view(resource_type, view)
        self.columns: list[tuple[str, Kind]] = [
            (c.name, _kind(c.type, c.collection)) for c in self.view.columns
        ]
        if raw:
            self.columns.append(("raw", "str"))
        self._raw = raw
        self._rows: list[tuple[Any, ...]] = []
        #: Rows already in Arrow form (pages read by the Arrow engine), in order with ``_rows``.
        self._batches: list[pa.RecordBatch] = []
        #: Per batch of ``_batches``, its date columns parsed (``add_arrow``), or None.
        self._dates: list[dict[int, tuple[pa.Array, int]] | None] = []
        self._converter: TableConverter | None = None
        #: Per column, values that did not fit the column's type (read after a conversion).
        self.warnings: dict[str, int] = {}

    def _table_converter(self) -> TableConverter:
        if self._converter is None:
            from jupyterhub_smart.views.definition import Column
            from jupyterhub_smart.views.table import TableConverter

            columns = list(self.view.columns)
            if self._raw:
                columns.append(Column("raw", "string", False, "raw"))
            self._converter = TableConverter(columns)
        return self._converter

    def _flush_rows(self) -> None:
        """Turn the rows added so far into a batch (before a batch that follows them)."""
        if self._rows:
            rows, self._rows = self._rows, []
            self._batches.append(self._table_converter().batch(rows))
            self._dates.append(None)

    def add_arrow(self, arrays: list[pa.Array], warnings: Mapping[str, int]) -> None:
        """Add rows the Arrow engine made (columns in the view's order and converted types)."""
        import pyarrow as pa

        if self._raw:
            raise ValueError("raw=True needs each resource's JSON: add() the resources")
        self._flush_rows()
        converter = self._table_converter()
        for name, count in warnings.items():
            converter.warnings[name] = converter.warnings.get(name, 0) + count
        if len(arrays) and len(arrays[0]):
            self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=converter.schema()))
            self._dates.append(
                {
                    i: _parse_dates(arrays[i], kind)
                    for i, (_name, kind) in enumerate(self.columns)
                    if kind in ("datetime", "date")
                }
            )

    def add(self, resources: Iterable[dict[str, Any]]) -> int:
        """Add resources (of this builder's type); returns how many resources were added."""
        rows_of = self.view.rows
        extend = self._rows.extend
        added = 0
        if self._raw:
            for resource in resources:
                text = orjson.dumps(resource).decode()
                extend((*row, text) for row in rows_of(resource))
                added += 1
        else:
            for resource in resources:
                extend(rows_of(resource))
                added += 1
        return added

    def __len__(self) -> int:
        return len(self._rows) + sum(len(b) for b in self._batches)

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table: strings, float64, int64, UTC timestamps, date32, lists."""
        import pyarrow as pa

        from jupyterhub_smart.views.gcpause import gc_paused
        from jupyterhub_smart.views.table import WARNINGS_KEY

        converter = self._table_converter()
        with gc_paused():
            if self._rows or not self._batches:
                # the typed columns replace the tuples; free them early
                rows, self._rows = self._rows, []
                self._batches.append(converter.batch(rows))
                self._dates.append(None)
            batches, self._batches = self._batches, []
            dates, self._dates = self._dates, []
            table = converter.table(batches)
        self._converter = None
        self.warnings = dict(converter.warnings)
        parsed_already = all(d is not None for d in dates)
        arrays = []
        fields = []
        for i, (field, (_name, kind), array) in enumerate(
            zip(table.schema, self.columns, table.columns, strict=True)
        ):
            if kind in ("datetime", "date"):
                if parsed_already:
                    parts = [d[i] for d in dates if d is not None]
                    date_type = pa.timestamp("us", tz="UTC") if kind == "datetime" else pa.date32()
                    array = pa.chunked_array([a for a, _ in parts], type=date_type)
                    unreadable = sum(n for _, n in parts)
                else:
                    array, unreadable = _parse_dates(array, kind)
                if unreadable:  # text that is no date: null, and counted like any misfit
                    self.warnings[field.name] = self.warnings.get(field.name, 0) + unreadable
                field = pa.field(field.name, array.type, metadata=field.metadata)
            arrays.append(array)
            fields.append(field)
        schema = pa.schema(fields, metadata={WARNINGS_KEY: orjson.dumps(self.warnings)})
        return pa.Table.from_arrays(arrays, schema=schema)

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame with one typed column per entry of :attr:`columns` (empty if no rows).

        Strings are ``string[pyarrow]`` (missing = ``pd.NA``), decimals float64
        (missing = NaN), integers ``Int64``, timestamps ``datetime64[us, UTC]``
        (missing = NaT), dates ``datetime64`` without a zone, flags ``boolean``,
        collections lists. The warning counts are in ``frame.attrs["warnings"]``.
        """
        import pandas as pd
        import pyarrow as pa

        mapping = {
            pa.string(): pd.StringDtype("pyarrow"),
            pa.bool_(): pd.BooleanDtype(),
            pa.int64(): pd.Int64Dtype(),
        }
        frame = self.to_arrow().to_pandas(types_mapper=mapping.get, date_as_object=False)
        frame.attrs["warnings"] = dict(self.warnings)
        return frame
