"""The output directory: NDJSON as downloaded, Parquet parts written while downloading, views, deletions.

Layout under ``--out DIR``::

    export.json                      state and summary
    ndjson/<Type>/<run>-<Type>-<n>.ndjson[.gz]    files as downloaded (gzip kept)
    parquet/<Type>/part-<run>-<n>-<chunk>.parquet
    views/<name>/part-<run>-<n>-<chunk>.parquet
    deleted/ndjson/<run>-Bundle-<n>.ndjson[.gz]   the deleted[] Bundles as downloaded
    deleted/parquet/part-<run>.parquet            (resource_type, resource_id) of each DELETE
    errors/<run>-OperationOutcome-<n>.ndjson[.gz] the server's error files
    errors/invalid/<run>-<key>-<chunk>.ndjson  lines that were not valid resources

Every Parquet part of ``parquet/<Type>/`` has one row per row of the type's
built-in view (:mod:`jupyterhub_smart.views.builtin`), with its typed columns,
plus ``resource_id`` and ``resource`` (the resource's raw JSON). A part is
named after its file and chunk and written atomically (temporary name, then
rename), so a chunk redone after a crash replaces itself: rows are never
duplicated. Each directory is a plain Parquet dataset that DuckDB
(``read_parquet('DIR/parquet/Patient/*.parquet')``), ``pyarrow.dataset`` and
Spark read as is.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import views
from ..views import builtin
from ..views.definition import Column, CompiledView
from ..views.table import TableConverter
from ..views.vector import Fallback, VectorView, try_compile, vector_batch

_EXTRA = [
    Column(name="resource_id", type="string", collection=False, element="resource_id"),
    Column(name="resource", type="string", collection=False, element="resource"),
]


@functools.cache
def _builtin_view(resource_type: str) -> tuple[CompiledView, VectorView | None]:
    """The type's built-in view, compiled once per process for both engines.

    An export opens a converter per file (a 1-million-resource export has
    about a hundred files); compiling the view and its Arrow form each time
    cost about 2 ms per file. Both compiled forms hold no per-file state
    (the :class:`TableConverter`, which does, stays per converter), and the
    built-in definitions never change while the process runs.
    """
    try:
        definition = builtin.load(resource_type)
    except KeyError:
        definition = builtin.generic(resource_type)
    view = views.compile_view(definition)
    return view, try_compile(view)[0]


class TypeConverter:
    """Resources of one type to Arrow batches: the built-in view's columns + id + raw JSON.

    :meth:`lines_batch` converts raw NDJSON lines with the views' Arrow engine
    (no per-resource Python); :meth:`batch` converts parsed resources with the
    closure engine, for chunks the Arrow engine hands back. Both give the same
    rows.
    """

    def __init__(self, resource_type: str) -> None:
        self.resource_type = resource_type
        self.view: CompiledView
        self.vector: VectorView | None
        self.view, self.vector = _builtin_view(resource_type)
        self.width = len(self.view.columns)
        self.converter = TableConverter([*self.view.columns, *_EXTRA])

    def batch(self, resources: Sequence[tuple[dict[str, Any], bytes]]) -> pa.RecordBatch:
        rows: list[tuple[Any, ...]] = []
        empty = (None,) * self.width
        for resource, raw in resources:
            extra = (resource.get("id"), raw.decode("utf-8"))
            produced = self.view.rows(resource)
            if not produced:
                rows.append(empty + extra)
            rows.extend(tuple(row) + extra for row in produced)
        return self.converter.batch(rows)

    def lines_batch(self, lines: Sequence[bytes]) -> pa.RecordBatch:
        """The batch of NDJSON ``lines``, every one a resource of this type with a string id.

        Raises :class:`~jupyterhub_smart.views.vector.Fallback` when a line is
        not that (the caller then checks the lines one by one) or when the
        Arrow engine does not read them exactly (the caller uses :meth:`batch`).
        """
        if self.vector is None:
            raise Fallback("the view is not covered by the Arrow engine")
        # one block, read whole: every line one {...} object of this type (else Fallback)
        resources = self.vector.read_block(b"\n".join(lines))
        if len(resources) != len(lines):
            raise Fallback("a blank line")
        ids = resources.field("id")
        if ids.null_count:
            raise Fallback("a line that is not a resource of this type with an id")
        try:
            raw = pa.array(lines, type=pa.binary()).cast(pa.string())
        except pa.ArrowInvalid as exc:
            raise Fallback(str(exc)) from None
        parent, arrays, warnings = self.vector.rows(resources, choices_checked=True)
        if len(parent) != len(lines) or (parent != np.arange(len(lines))).any():
            missing = np.setdiff1d(np.arange(len(lines), dtype=np.int64), parent)
            if len(missing):  # a resource without rows keeps one row: its id and JSON
                everything = np.concatenate([parent, missing])
                order = pa.array(np.argsort(everything, kind="stable"))
                arrays = [
                    pa.concat_arrays([a, pa.nulls(len(missing), a.type)]).take(order)
                    for a in arrays
                ]
                parent = everything[order.to_numpy()]
            taken = pa.array(parent)
            ids, raw = ids.take(taken), raw.take(taken)
        for name, count in warnings.items():
            self.converter.warnings[name] = self.converter.warnings.get(name, 0) + count
        return pa.RecordBatch.from_arrays([*arrays, ids, raw], schema=self.converter.schema())


class ViewWriter:
    """A user's ViewDefinition (``--view``), applied to the resources of its type."""

    def __init__(self, name: str, definition: Mapping[str, Any]) -> None:
        self.name = name
        self.view = views.compile_view(definition)
        self.vector: VectorView | None = try_compile(self.view)[0]
        self.converter = TableConverter(self.view.columns)

    def batch(self, resources: Sequence[dict[str, Any]]) -> pa.RecordBatch | None:
        rows = [tuple(r) for resource in resources for r in self.view.rows(resource)]
        return self.converter.batch(rows) if rows else None

    def lines_batch(self, lines: Sequence[bytes]) -> pa.RecordBatch | None:
        """The view's rows of checked NDJSON ``lines``; raises ``Fallback`` as :class:`TypeConverter`."""
        if self.vector is None:
            raise Fallback("the view is not covered by the Arrow engine")
        return vector_batch(self.vector, lines, self.converter)


#: Columns whose every value differs (one per resource): no dictionary for them.
_UNIQUE = frozenset(column.name for column in _EXTRA)


def _write_parquet(table: pa.Table, path: Path) -> None:
    """zstd Parquet; no dictionary encoding for the id and raw JSON columns.

    Every resource has its own id and JSON, so a dictionary never pays off
    there: the writer hashed each value until the dictionary page filled
    (1 MiB), then fell back to plain encoding. The values read back are the
    same; the files are a little smaller.
    """
    dictionary = [name for name in table.column_names if name not in _UNIQUE]
    pq.write_table(table, path, compression="zstd", use_dictionary=dictionary)


def write_part(path: Path, batch: pa.RecordBatch) -> None:
    """Write one Parquet part atomically (a redone chunk replaces its earlier self)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    _write_parquet(pa.Table.from_batches([batch]), tmp)
    os.replace(tmp, path)


def remove_parts(directory: Path, prefix: str) -> None:
    """Delete the parts of one file (its download restarts from byte 0)."""
    if directory.is_dir():
        for part in directory.glob(f"{prefix}*.parquet"):
            part.unlink()


def deleted_ids(lines: Sequence[bytes]) -> list[tuple[str, str]]:
    """``(type, id)`` of every DELETE entry of the deleted[] Bundles."""
    found = []
    for line in lines:
        bundle = orjson.loads(line)
        for entry in bundle.get("entry") or []:
            request = entry.get("request") or {}
            url = request.get("url")
            if request.get("method") == "DELETE" and isinstance(url, str) and url.count("/") == 1:
                resource_type, resource_id = url.split("/")
                found.append((resource_type, resource_id))
    return found


def apply_replacements(parquet_dir: Path, run: str, removed: Mapping[str, set[str]]) -> int:
    """Drop, from parts of earlier runs, rows whose resource was deleted or updated in ``run``.

    Returns the number of rows removed. A rewritten part replaces the old one
    atomically, so an interruption leaves each part either old or new.
    """
    removed_rows = 0
    for resource_type, ids in removed.items():
        if not ids:
            continue
        folder = parquet_dir / resource_type
        if not folder.is_dir():
            continue
        id_array = pa.array(sorted(ids), type=pa.string())
        for part in sorted(folder.glob("part-*.parquet")):
            if part.name.startswith(f"part-{run}-"):
                continue
            table = pq.read_table(part)
            keep = pc.invert(pc.is_in(table["resource_id"], value_set=id_array))
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue
            removed_rows += table.num_rows - kept.num_rows
            tmp = part.with_name(f".{part.name}.tmp")
            _write_parquet(kept, tmp)
            os.replace(tmp, part)
    return removed_rows


def ids_of_run(parquet_dir: Path, run: str, resource_type: str) -> set[str]:
    """Resource ids this run wrote for a type (to replace older copies)."""
    folder = parquet_dir / resource_type
    ids: set[str] = set()
    for part in folder.glob(f"part-{run}-*.parquet") if folder.is_dir() else []:
        column = pq.read_table(part, columns=["resource_id"])["resource_id"]
        ids.update(v for v in column.to_pylist() if v is not None)
    return ids
