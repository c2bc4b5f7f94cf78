"""SQL on FHIR v2 ViewDefinitions: FHIR resources to typed tables.

A ViewDefinition (HL7 "SQL on FHIR" implementation guide, v2) names a resource
type, the columns to extract with FHIRPath, the rows to unnest (``forEach``,
``forEachOrNull``, ``repeat``), unions and filters. :func:`compile_view`
validates one and compiles every expression once into Python closures;
:func:`run` applies it to resources and returns a ``pyarrow.Table``::

    from jupyterhub_smart import views
    table = views.run(view_json, resources)

Invalid views raise :class:`ViewDefinitionError` naming the element
(``select[0].column[2].path``) before any resource is read. Built-in views for
common resource types are in :mod:`.builtin`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .definition import Column, CompiledView, compile_view
from .errors import ViewDefinitionError, ViewEvaluationError

if TYPE_CHECKING:  # pyarrow is imported when a table is built, not when a view is compiled
    import pyarrow as pa

    from .table import TableConverter

__all__ = [
    "Column",
    "CompiledView",
    "ViewDefinitionError",
    "ViewEvaluationError",
    "compile_view",
    "iter_batches",
    "run",
    "warnings_of",
]

#: Rows per Arrow record batch when streaming.
BATCH_ROWS = 65_536


def _compiled(view: Mapping[str, Any] | CompiledView) -> CompiledView:
    return view if isinstance(view, CompiledView) else compile_view(view)


def iter_batches(
    view: Mapping[str, Any] | CompiledView,
    resources: Iterable[Mapping[str, Any]],
    *,
    batch_rows: int = BATCH_ROWS,
    converter: TableConverter | None = None,
    engine: str = "python",
) -> Iterator[pa.RecordBatch]:
    """Stream ``resources`` through ``view`` as record batches of about ``batch_rows`` rows.

    Memory stays bounded by one batch whatever the number of resources. Pass a
    ``converter`` to read the warning counts after the last batch. ``engine``:
    ``python`` (the compiled closures, resource by resource), ``arrow`` (the
    column-wise engine of :mod:`.vector`; raises :class:`.vector.Unsupported`
    for a view it does not cover) or ``auto`` (arrow when it covers the view).
    Every engine gives the same rows.
    """
    from .table import TableConverter

    compiled = _compiled(view)
    converter = converter or TableConverter(compiled.columns)
    if engine not in ("python", "arrow", "auto"):
        raise ValueError(f"unknown engine {engine!r} (python, arrow or auto)")
    if engine != "python":
        from .vector import chunk_batches, compile_vector, try_compile

        vector = compile_vector(compiled) if engine == "arrow" else try_compile(compiled)[0]
        if vector is not None:
            yield from chunk_batches(
                compiled, vector, _json_chunks(resources, max(1, batch_rows // 4)), converter
            )
            return
    yield from _closure_batches(compiled, resources, batch_rows, converter)


def _json_chunks(
    resources: Iterable[Any], size: int
) -> Iterator[tuple[list[bytes], Callable[[], Iterable[Any]], None]]:
    """Chunks of ``size`` resources as NDJSON lines, for the Arrow engine."""
    import orjson

    source = iter(resources)
    while True:
        chunk = list(itertools.islice(source, size))
        if not chunk:
            return
        try:
            lines = [orjson.dumps(r) for r in chunk]
        except TypeError:  # not JSON: the closure engine says what it makes of it
            lines = [b"not JSON"]
        yield lines, (lambda chunk=chunk: chunk), None  # type: ignore[misc]


def _closure_batches(
    compiled: CompiledView,
    resources: Iterable[Mapping[str, Any]],
    batch_rows: int,
    converter: TableConverter,
) -> Iterator[pa.RecordBatch]:
    from .gcpause import gc_paused

    rows_of = compiled.rows
    source = iter(resources)
    deep = "<resource too deeply nested>"
    while True:
        pending: list[tuple[Any, ...]] = []
        with gc_paused():  # released at each batch: the caller's code never runs paused
            for resource in source:
                try:
                    pending.extend(rows_of(resource))
                except RecursionError:
                    converter.warnings[deep] = converter.warnings.get(deep, 0) + 1
                if len(pending) >= batch_rows:
                    break
            batch = converter.batch(pending) if pending else None
        if batch is None:
            return
        yield batch


def run(
    view: Mapping[str, Any] | CompiledView,
    resources: Iterable[Mapping[str, Any]],
    *,
    engine: str = "python",
) -> pa.Table:
    """Rows of ``view`` over ``resources`` as an Arrow table, columns in the view's order.

    A ``collection`` column is a list column; a missing value is null. Values
    that do not fit a declared type are null and counted (:func:`warnings_of`).
    ``engine`` as for :func:`iter_batches`.
    """
    from .table import TableConverter

    compiled = _compiled(view)
    converter = TableConverter(compiled.columns)
    batches = list(iter_batches(compiled, resources, converter=converter, engine=engine))
    return converter.table(batches)


def warnings_of(table: pa.Table | pa.RecordBatch | pa.Schema) -> dict[str, int]:
    """Per column, how many values did not fit their declared type and became null."""
    from .table import warnings_of as read

    return read(table)
