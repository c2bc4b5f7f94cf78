"""``view run --jobs N``: NDJSON chunks turned into record batches by N worker processes.

The parent reads raw lines (cheap) and hands chunks of them to a process pool;
each worker parses its chunk, runs the compiled view and returns one Arrow
record batch with its counts. The parent writes the batches in input order, so
the output is the same as with one process, with at most ``2 x jobs`` chunks
in flight (memory stays bounded). Each worker compiles the view once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .ndjson import NdjsonReader

__all__ = ["ChunkResult", "parallel_batches"]


@dataclass
class ChunkResult:
    """What a worker returns for one chunk."""

    batch: pa.RecordBatch | None
    warnings: dict[str, int] = field(default_factory=dict)
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)


_compiled: dict[str, Any] = {}


def _convert(view_json: str, name: str, chunk: list[tuple[int, bytes]]) -> ChunkResult:
    """In a worker: parse the chunk's lines, run the view, build one record batch."""
    import orjson

    from . import iter_batches
    from .definition import compile_view
    from .table import TableConverter

    compiled = _compiled.get(view_json)
    if compiled is None:
        compiled = _compiled[view_json] = compile_view(orjson.loads(view_json))
    reader = NdjsonReader([])
    converter = TableConverter(compiled.columns)
    batches = list(
        iter_batches(compiled, reader.parse(name, chunk), batch_rows=1 << 62, converter=converter)
    )
    return ChunkResult(
        batches[0] if batches else None,
        dict(converter.warnings),
        reader.bad_lines,
        reader.bad_examples,
    )


def parallel_batches(
    view: Mapping[str, Any], reader: NdjsonReader, *, jobs: int, chunk_lines: int
) -> Iterator[ChunkResult]:
    """Chunk results in input order; ``reader`` counts the lines read."""
    import orjson

    view_json = orjson.dumps(view).decode()
    pending: deque[Future[ChunkResult]] = deque()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        try:
            for name, chunk in reader.chunks(chunk_lines):
                pending.append(pool.submit(_convert, view_json, name, chunk))
                if len(pending) >= 2 * jobs:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
