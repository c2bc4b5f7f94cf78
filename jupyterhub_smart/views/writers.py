"""Record batches to a Parquet, CSV or NDJSON file, one batch at a time.

The file's schema is the first batch's; a later batch whose undeclared columns
were typed differently is cast to it. CSV has no list type, so a collection
column is written as JSON text there.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
import pyarrow as pa

__all__ = ["BatchWriter", "open_writer"]


class BatchWriter(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self, schema: pa.Schema) -> None: ...


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema, check_metadata=False):
        return batch
    arrays = [batch.column(i).cast(field.type, safe=False) for i, field in enumerate(schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _ParquetWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._schema = batch.schema
            self._writer = pq.ParquetWriter(self.path, batch.schema)
        assert self._schema is not None
        self._writer.write_batch(_conform(batch, self._schema))

    def close(self, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            pq.write_table(schema.empty_table(), self.path)
        else:
            self._writer.close()


def _flat(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Lists as JSON text (CSV has no list type)."""
    arrays = []
    fields = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_list(field.type):
            values = [None if v is None else orjson.dumps(v).decode() for v in column.to_pylist()]
            column = pa.array(values, type=pa.string())
            field = pa.field(field.name, pa.string(), metadata=field.metadata)
        arrays.append(column)
        fields.append(field)
    return pa.RecordBatch.from_arrays(
        arrays, schema=pa.schema(fields, metadata=batch.schema.metadata)
    )


class _CsvWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.csv as csv

        batch = _flat(batch)
        if self._writer is None:
            self._schema = batch.schema
            self._writer = csv.CSVWriter(self.path, batch.schema)
        assert self._schema is not None
        self._writer.write_batch(_conform(batch, self._schema))

    def close(self, schema: pa.Schema) -> None:
        import pyarrow.csv as csv

        if self._writer is None:
            empty = _flat(pa.RecordBatch.from_pylist([], schema=schema))
            csv.write_csv(empty, self.path)
        else:
            self._writer.close()


class _NdjsonWriter:
    def __init__(self, path: str) -> None:
        self._file = open(path, "wb")  # noqa: SIM115  (closed in close())

    def write(self, batch: pa.RecordBatch) -> None:
        dumps = orjson.dumps
        self._file.write(b"".join(dumps(row) + b"\n" for row in batch.to_pylist()))

    def close(self, schema: pa.Schema) -> None:
        self._file.close()


def open_writer(path: str) -> BatchWriter:
    """A writer for ``path`` chosen by its suffix; ValueError for an unknown one."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        return _ParquetWriter(path)
    if lower.endswith(".csv"):
        return _CsvWriter(path)
    if lower.endswith((".ndjson", ".jsonl")):
        return _NdjsonWriter(path)
    raise ValueError(f"{path}: unknown output format (use .parquet, .csv or .ndjson)")
