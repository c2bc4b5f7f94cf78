"""``jupyterhub-smart view run`` and ``jupyterhub-smart view check``.

``view run VIEW INPUT... --out OUT`` streams NDJSON resources through a view
into Parquet, CSV or NDJSON (chosen by OUT's suffix), one record batch at a
time, so memory stays flat whatever the input size. ``VIEW`` is a
ViewDefinition JSON file or the name of a built-in view (``Observation``).
``view check VIEW`` validates a view and prints its columns.

Exit status: 0 done, 1 the run failed (an input is missing, the view does not
fit the data in a way the spec calls an error), 2 the view is invalid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ndjson import NdjsonReader
    from .vector import Block, Chunk

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``view`` command with its ``run`` and ``check`` sub-commands."""
    parser = subparsers.add_parser(
        "view",
        help="run SQL on FHIR ViewDefinitions over NDJSON files",
        description="Flatten FHIR resources into tables with SQL on FHIR v2 ViewDefinitions.",
    )
    commands = parser.add_subparsers(dest="view_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    run = commands.add_parser(
        "run",
        help="run a view over NDJSON files into Parquet, CSV or NDJSON",
        description="Run VIEW over the resources of INPUT (.ndjson, .ndjson.gz, a folder "
        "of them, or - for standard input) and write the rows to OUT.",
    )
    run.add_argument(
        "view", metavar="VIEW", help="ViewDefinition JSON file, or a built-in view name"
    )
    run.add_argument("inputs", metavar="INPUT", nargs="+", help=".ndjson, .ndjson.gz, folder or -")
    run.add_argument(
        "--out", required=True, metavar="OUT", help="output file: .parquet, .csv or .ndjson"
    )
    from jupyterhub_smart.cli import positive_int

    run.add_argument(
        "--batch-rows",
        type=positive_int,
        default=65_536,
        metavar="N",
        help="rows per batch written (memory use is about one batch; default 65536)",
    )
    run.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes parsing and flattening chunks of lines in parallel (default 1); "
        "the output is the same, in the same order",
    )
    run.add_argument(
        "--engine",
        choices=("auto", "arrow", "duckdb", "python"),
        default="auto",
        help="arrow: the view evaluated column-wise on Arrow arrays read with pyarrow.json "
        "(chunks of data it does not read exactly run on python); duckdb: the view as one DuckDB "
        "query (files only); python: resource by resource with compiled FHIRPath closures; auto "
        "(default): arrow when it covers the view, else python. Every engine writes the same rows",
    )
    run.set_defaults(func=_run)

    check = commands.add_parser(
        "check",
        help="validate a view and list its columns",
        description="Validate VIEW and print its columns with their types.",
    )
    check.add_argument(
        "view", metavar="VIEW", help="ViewDefinition JSON file, or a built-in view name"
    )
    check.set_defaults(func=_check)


def _load_view(spec: str) -> Any:
    import orjson

    from .builtin import load, names

    path = Path(spec)
    if path.is_file():
        try:
            return orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise SystemExit(_fail(2, f"{spec}: not valid JSON ({exc.msg})")) from None
    if spec in names():
        return load(spec)
    raise SystemExit(
        _fail(2, f"{spec}: no such file, and not a built-in view ({', '.join(names())})")
    )


def _fail(status: int, message: str) -> int:
    print(f"jupyterhub-smart view: {message}", file=sys.stderr)
    return status


def _check(args: argparse.Namespace) -> int:
    from . import ViewDefinitionError, compile_view

    try:
        compiled = compile_view(_load_view(args.view))
    except ViewDefinitionError as exc:
        return _fail(2, f"invalid view: {exc}")
    print(f"{args.view}: valid view of {compiled.resource}, {len(compiled.columns)} columns")
    for column in compiled.columns:
        kind = column.type or "(not declared)"
        suffix = " (collection)" if column.collection else ""
        print(f"  {column.name}\t{kind}{suffix}")
    return 0


#: :func:`_run_duckdb` stopped after writing: the Python engine writes the output again.
_RERUN = "rerun"


def _run_duckdb(args: argparse.Namespace, files: list[str], writer: Any) -> int | str | None:
    """Run the view as one DuckDB query into ``writer``.

    ``None`` when the Python engine must run the view instead, before anything is
    written (standard input, a view the translation does not cover); ``_RERUN``
    after a DuckDB error (malformed JSON, data only the Python engine treats
    exactly): ``writer`` is closed and the output must be written again.
    """
    from .sql import SqlRun, Unsupported, compile_sql

    if "-" in files:
        print("jupyterhub-smart view: standard input: engine python", file=sys.stderr)
        return None
    try:
        query = compile_sql(_load_view(args.view))
    except Unsupported as exc:
        print(f"jupyterhub-smart view: not translated to SQL ({exc})", file=sys.stderr)
        return None
    try:
        import duckdb
    except ImportError:
        print("jupyterhub-smart view: duckdb is not installed: engine python", file=sys.stderr)
        return None

    run = SqlRun(query, files, threads=args.jobs)
    rows = 0
    try:
        for batch in run.batches(args.batch_rows):
            writer.write(batch)
            rows += batch.num_rows
    except duckdb.Error as exc:
        writer.close(run.schema())
        reason = str(exc).splitlines()[0][:200]
        print(f"jupyterhub-smart view: duckdb stopped ({reason}); rerunning", file=sys.stderr)
        return _RERUN
    writer.close(run.schema())
    print("jupyterhub-smart view: engine duckdb", file=sys.stderr)
    print(f"{rows:,} rows from {len(files)} input(s) -> {args.out}", file=sys.stderr)
    if run.warnings:
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(run.warnings.items()))
        print(
            f"values that did not fit their column type (written as null): {counts}",
            file=sys.stderr,
        )
    return 0


#: Bytes of NDJSON read per block for the Arrow engine, per row of ``--batch-rows``
#: (65,536 rows: 16 MB blocks, about 22,000 Observations).
BLOCK_BYTES_PER_ROW = 256


def _chunk(reader: NdjsonReader, name: str, chunk: list[tuple[int, bytes]]) -> Chunk:
    return (
        [line for _, line in chunk],
        lambda: reader.parse(name, chunk),
        lambda skipped: reader.check(name, chunk, skipped),
    )


def _chunks(reader: NdjsonReader, size: int) -> Iterator[Chunk]:
    """Chunks of ``size`` lines, for the closure engine."""
    for name, chunk in reader.chunks(size):
        yield _chunk(reader, name, chunk)


def _blocks(reader: NdjsonReader, size: int) -> Iterator[Block]:
    """Blocks of about ``size`` bytes for the Arrow engine, with their lines for when it hands one back."""

    def counted(lines: int) -> None:
        reader.lines += lines

    for name, number, data in reader.blocks(size):
        yield (
            data,
            lambda name=name, number=number, data=data: _chunk(  # type: ignore[misc]
                reader, name, reader.block_chunk(number, data)
            ),
            counted,
        )


def _run(args: argparse.Namespace) -> int:
    from . import ViewDefinitionError, ViewEvaluationError, compile_view
    from .ndjson import NdjsonReader, expand_inputs
    from .writers import open_writer

    try:
        compiled = compile_view(_load_view(args.view))
    except ViewDefinitionError as exc:
        return _fail(2, f"invalid view: {exc}")
    try:
        files = expand_inputs(args.inputs)
    except (OSError, ValueError) as exc:
        return _fail(1, str(exc))
    try:
        writer = open_writer(args.out)
    except ValueError as exc:
        return _fail(2, str(exc))
    if args.engine == "duckdb":
        status = _run_duckdb(args, files, writer)
        if status == _RERUN:
            writer = open_writer(args.out)
        elif isinstance(status, int):
            return status
    reader = NdjsonReader(files)
    from .table import TableConverter
    from .vector import EngineStats, block_batches, chunk_batches, try_compile

    vector, why = try_compile(compiled) if args.engine in ("auto", "arrow") else (None, "")
    if vector is not None:
        print("jupyterhub-smart view: engine arrow", file=sys.stderr)
    elif why:
        print(
            f"jupyterhub-smart view: engine python (the Arrow engine does not cover {why})",
            file=sys.stderr,
        )
    else:
        print("jupyterhub-smart view: engine python", file=sys.stderr)
    converter = TableConverter(compiled.columns)
    stats = EngineStats()
    if vector is not None:
        batches = block_batches(
            compiled,
            vector,
            _blocks(reader, args.batch_rows * BLOCK_BYTES_PER_ROW),
            converter,
            stats,
        )
    else:
        batches = chunk_batches(compiled, None, _chunks(reader, args.batch_rows), converter, stats)
    rows = 0
    try:
        for batch in batches:
            writer.write(batch)
            rows += batch.num_rows
    except ViewEvaluationError as exc:
        writer.close(converter.schema())
        return _fail(1, f"view error after {reader.lines} lines: {exc}")
    writer.close(converter.schema())
    print(
        f"{rows:,} rows from {reader.lines:,} lines of {len(files)} input(s) -> {args.out}",
        file=sys.stderr,
    )
    if vector is not None and stats.closure_chunks:
        print(
            f"{stats.closure_chunks} of {stats.closure_chunks + stats.vector_chunks} chunk(s) "
            f"on the closure engine (last: {stats.last_fallback})",
            file=sys.stderr,
        )
    if converter.warnings:
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(converter.warnings.items()))
        print(
            f"values that did not fit their column type (written as null): {counts}",
            file=sys.stderr,
        )
    if reader.bad_lines:
        print(f"{reader.bad_lines} line(s) skipped, not a JSON object:", file=sys.stderr)
        for example in reader.bad_examples:
            print(f"  {example}", file=sys.stderr)
    return 0
