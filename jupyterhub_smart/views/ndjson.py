"""Reading FHIR NDJSON (Bulk Data export files) as a stream of resources.

Inputs are ``.ndjson`` files, ``.ndjson.gz`` files, folders of them (read in
name order, not recursively) or ``-`` for standard input. Lines are read one at
a time, so memory does not grow with the file. A line that is not a JSON object
(truncated, too deeply nested for the parser, not JSON) is skipped and counted
in :attr:`NdjsonReader.bad_lines`, with the first few locations kept for the
report: one bad line never stops a ten-million-line run.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["NdjsonReader", "expand_inputs"]

_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


def _read_into(stream: IO[bytes] | gzip.GzipFile, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` as far as it goes; the number of bytes read."""
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])  # type: ignore[union-attr]
        if not got:
            break
        filled += got
    return filled


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files to read for ``inputs``: folders become their NDJSON files in name order.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a
    folder without NDJSON files, so that a typo is an error, not an empty table.
    """
    files: list[str] = []
    for item in inputs:
        if item == "-":
            files.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))
            if not found:
                raise ValueError(f"{item}: no .ndjson or .ndjson.gz files in this folder")
            files.extend(str(p) for p in found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


class NdjsonReader:
    """Iterates the resources of NDJSON files, counting the lines it had to skip."""

    #: How many bad-line locations to keep for the report.
    KEEP = 5

    def __init__(self, files: Iterable[str]) -> None:
        self.files = list(files)
        self.lines = 0
        self.bad_lines = 0
        self.bad_examples: list[str] = []

    def _open(self, name: str) -> IO[bytes] | gzip.GzipFile:
        if name == "-":
            return sys.stdin.buffer
        if name.endswith(".gz"):
            return gzip.open(name, "rb")
        return open(name, "rb")

    def _bad(self, name: str, number: int, reason: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < self.KEEP:
            self.bad_examples.append(f"{name}:{number}: {reason}")

    def chunks(self, size: int) -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
        """``(file, [(line number, line), ...])`` of at most ``size`` non-blank lines, unparsed.

        For parsing elsewhere (worker processes); a chunk never spans two files.
        """
        for name in self.files:
            stream = self._open(name)
            chunk: list[tuple[int, bytes]] = []
            try:
                for number, line in enumerate(stream, start=1):
                    if not line.strip():
                        continue
                    self.lines += 1
                    chunk.append((number, line))
                    if len(chunk) >= size:
                        yield name, chunk
                        chunk = []
            except (OSError, EOFError) as exc:  # a truncated .gz, an unreadable file
                self._bad(name, 0, f"read error: {exc}")
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()
            if chunk:
                yield name, chunk

    def blocks(self, size: int) -> Iterator[tuple[str, int, memoryview]]:
        """``(file, number of its first line, data)``: about ``size`` bytes cut after a newline.

        For readers that take whole blocks (the views' Arrow engine); the last
        block of a file may lack the final newline. Each block is a new buffer,
        read into without copies. A block never spans two files.
        :meth:`block_chunk` turns one into :meth:`chunks`' form.
        """
        for name in self.files:
            stream = self._open(name)
            number = 1
            rest = b""
            try:
                while True:
                    buffer = bytearray(max(size, 2 * len(rest)))
                    view = memoryview(buffer)
                    view[: len(rest)] = rest
                    filled = len(rest) + _read_into(stream, view[len(rest) :])
                    if filled == len(rest):
                        break
                    cut = buffer.rfind(b"\n", 0, filled) + 1
                    rest = bytes(view[cut:filled])
                    if cut:
                        yield name, number, view[:cut]
                        number += buffer.count(b"\n", 0, cut)
            except (OSError, EOFError) as exc:  # a truncated .gz, an unreadable file
                self._bad(name, 0, f"read error: {exc}")
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()
            if rest:
                yield name, number, memoryview(rest)

    def block_chunk(self, number: int, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """The non-blank lines of a block with their numbers (counted as read: :attr:`lines`)."""
        lines = bytes(data).split(b"\n")
        chunk = [(n, line) for n, line in enumerate(lines, start=number) if line.strip()]
        self.lines += len(chunk)
        return chunk

    def parse(self, name: str, chunk: list[tuple[int, bytes]]) -> Iterator[dict[str, Any]]:
        """The resources of a chunk; lines that are not JSON objects are counted."""
        for number, line in chunk:
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._bad(name, number, f"not JSON ({exc.msg})")
                continue
            if resource.__class__ is not dict:
                self._bad(name, number, "not a JSON object")
                continue
            yield resource

    def check(self, name: str, chunk: list[tuple[int, bytes]], positions: list[int]) -> None:
        """Count the lines at ``positions`` of a chunk that are not JSON objects (not kept)."""
        for _ in self.parse(name, [chunk[i] for i in positions]):
            pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name, chunk in self.chunks(1024):
            yield from self.parse(name, chunk)
