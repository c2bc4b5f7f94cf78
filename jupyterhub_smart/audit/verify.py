"""Check an audit log end to end: every line intact, every link in the chain present.

The verifier re-derives everything from the bytes on disk with the same rules
the writer used (:mod:`.chain`) and stops at the first problem, naming the
``seq`` where the chain breaks and why. It reads files as streams, and never
more than :data:`MAX_LINE_BYTES` of one line, so a log of any size (or a file
with one enormous line, planted or corrupt) is checked in constant memory.

What a pass proves: the files given form one unbroken chain from ``seq`` 1 to
the reported head, and no line in it was edited, removed, reordered or taken
from another log. What it cannot prove on its own: that lines were not cut off
the *end* (compare the reported head with a copy kept elsewhere: the hub's
start-up log line, a FHIR sink, or an earlier verify run).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .chain import GENESIS, RecordError, parse_line, sha256_hex
from .checkpoint import Checkpoint
from .log import _ROTATED, _ROTATED_GZ, open_log_file, rotated_files

#: Longest line a verifier reads. The writer's records are a few kilobytes at
#: most (free text is cut at 1,024 characters); a longer line is not an audit
#: record, and reading it whole would let one planted line exhaust memory.
MAX_LINE_BYTES = 1024 * 1024


class ChainBroken(Exception):
    """The log does not verify; ``seq`` is the first record that is wrong."""

    def __init__(self, seq: int, reason: str, file: Path | None = None, line: int | None = None):
        self.seq = seq
        self.reason = reason
        self.file = file
        self.line = line
        where = f" ({file.name}, line {line})" if file is not None and line is not None else ""
        super().__init__(f"seq {seq}: {reason}{where}")


@dataclass
class Report:
    """What a successful verification saw."""

    log_id: str = ""
    records: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    files: list[Path] = field(default_factory=list)
    deferred: int = 0
    torn_files: list[Path] = field(default_factory=list)
    #: First seq verified (above 1 when retention deleted the files before it).
    start_seq: int = 1
    #: Signed checkpoints of this log matched against its lines.
    checkpoints_checked: int = 0
    #: Signed checkpoints of seqs before the retained start (deleted, not checkable).
    checkpoints_before_start: int = 0
    #: The latest checkpoint checked: (seq, time).
    last_checkpoint: tuple[int, str] | None = None


@dataclass
class Entry:
    """One verified record with where it came from."""

    record: dict[str, Any]
    line: bytes
    file: Path
    lineno: int


def _is_log_file(path: Path) -> bool:
    name = path.name
    if name.endswith(".lock") or ".torn-" in name:
        return False
    return name.endswith(".jsonl") or bool(_ROTATED.search(name) or _ROTATED_GZ.search(name))


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files making up the log(s) named: directories and rotated siblings included."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and _is_log_file(child):
                    found[child.resolve()] = None
        elif path.is_file():
            if not _ROTATED.search(path.name):
                for sibling in rotated_files(path.absolute()):
                    found[sibling.resolve()] = None
            found[path.resolve()] = None
        else:
            raise FileNotFoundError(f"no such audit log file or directory: {path}")
    # A compression cut short leaves a file and its .gz twin: read the plain one.
    return [p for p in found if not (p.name.endswith(".gz") and p.with_suffix("") in found)]


def _order_key(path: Path) -> tuple[int, str]:
    """Order files by the seq of their first valid line (file names are only a hint)."""
    try:
        with open_log_file(path) as handle:
            first = handle.readline(MAX_LINE_BYTES + 1).rstrip(b"\n")
        if first:
            return parse_line(first)["seq"], path.name
    except (RecordError, OSError):
        pass
    match = _ROTATED.search(path.name) or _ROTATED_GZ.search(path.name)
    if match:
        return int(match.group(1)), path.name
    return 2**62, path.name


def torn_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Torn tails set aside by the writer next to the given logs (for the report)."""
    dirs = {Path(p) if Path(p).is_dir() else Path(p).parent for p in paths}
    return sorted(f for d in dirs if d.is_dir() for f in d.iterdir() if ".torn-" in f.name)


#: Bytes read from a file at a time: lines are split out of blocks, not read one by one.
_BLOCK = 4 * 1024 * 1024
#: Markers :func:`_lines` yields in place of a line (compared by identity).
#: (Lines split out of a block are always new objects, never these.)
_TOO_LONG: bytes = b"\0line too long"
_TORN: bytes = b"\0torn line"


def _lines(handle: IO[bytes]) -> Iterator[bytes]:
    """Each line without its newline; then :data:`_TOO_LONG` or :data:`_TORN` if the file
    holds a line longer than :data:`MAX_LINE_BYTES` or ends without a newline.

    Memory stays within one block plus one line, whatever the file holds.
    """
    carry = b""
    while True:
        block = handle.read(_BLOCK)
        if not block:
            break
        data = carry + block if carry else block
        parts = data.split(b"\n")
        carry = parts.pop()
        for line in parts:
            if len(line) > MAX_LINE_BYTES:
                yield _TOO_LONG
                return
            yield line
        if len(carry) > MAX_LINE_BYTES:
            yield _TOO_LONG
            return
    if carry:
        yield _TORN


class _Chain:
    """The links between lines: one log_id, seq without gaps, each prev the hash of the line
    before. Fed in order, one line at a time, by the sequential and the parallel reader."""

    def __init__(self, report: Report, anchors: Mapping[tuple[str, int], str] | None) -> None:
        self.report = report
        self.anchors = anchors
        self.expected = 1
        self.prev_hash = GENESIS
        self.log_id = ""

    def link(
        self,
        path: Path,
        lineno: int,
        log_id: str,
        seq: int,
        prev: str,
        line_hash: str,
        deferred: bool,
    ) -> None:
        expected = self.expected
        if not self.log_id:
            self.log_id = self.report.log_id = log_id
        if log_id != self.log_id:
            raise ChainBroken(
                expected,
                f"line belongs to another log (log_id {log_id}, expected {self.log_id})",
                path,
                lineno,
            )
        if expected == 1 and seq > 1 and self.anchors:
            anchored = self.anchors.get((log_id, seq - 1))
            if anchored is not None and anchored == prev:
                expected = self.expected = seq
                self.prev_hash = anchored
                self.report.start_seq = seq
        if seq != expected:
            if expected == 1:
                reason = (
                    f"the log starts at seq {seq}: seq 1 to {seq - 1} missing "
                    "(an earlier rotated file missing? if retention deleted them, "
                    "verify with --checkpoints and --jwks: a signed checkpoint "
                    "anchors the retained start)"
                )
            elif seq > expected:
                reason = (
                    f"missing: seq {seq} follows seq {expected - 1} (line(s) deleted, "
                    "or a rotated file missing)"
                )
            else:
                reason = (
                    f"out of order: found seq {seq} after seq {expected - 1} "
                    "(lines swapped or duplicated)"
                )
            raise ChainBroken(expected, reason, path, lineno)
        if prev != self.prev_hash:
            raise ChainBroken(
                seq,
                "prev does not match the hash of the previous line (this line or "
                "the one before it was altered or replaced)",
                path,
                lineno,
            )
        self.prev_hash = line_hash
        self.expected = seq + 1
        report = self.report
        report.records += 1
        report.head_seq, report.head_hash = seq, line_hash
        if deferred:
            report.deferred += 1

    def unreadable(self, path: Path, lineno: int, marker: bytes) -> ChainBroken:
        """The error for a line :func:`_lines` could not give whole."""
        if marker is _TOO_LONG:
            return ChainBroken(
                self.expected,
                f"line {lineno} is longer than {MAX_LINE_BYTES:,} bytes, far beyond any "
                "audit record: the file was altered or is not an audit log (not read "
                "further)",
                path,
                lineno,
            )
        return ChainBroken(
            self.expected,
            "truncated line (no newline at the end of the file: a torn write, or the line was cut)",
            path,
            lineno,
        )


def iter_verified(
    files: list[Path],
    report: Report | None = None,
    anchors: Mapping[tuple[str, int], str] | None = None,
) -> Iterator[Entry]:
    """Yield every record in chain order; raise :class:`ChainBroken` at the first fault.

    ``anchors`` maps ``(log_id, seq)`` to a line hash vouched for elsewhere (a
    signed checkpoint): a log whose earlier files were deleted by retention
    may start at seq S when an anchor gives the hash of seq S-1, which the
    first retained record's ``prev`` must equal.
    """
    report = report if report is not None else Report()
    ordered = sorted(files, key=_order_key)
    report.files = ordered
    chain = _Chain(report, anchors)
    for path in ordered:
        with open_log_file(path) as handle:
            for lineno, line in enumerate(_lines(handle), start=1):
                if line is _TOO_LONG or line is _TORN:
                    raise chain.unreadable(path, lineno, line)
                try:
                    record = parse_line(line)
                except RecordError as exc:
                    raise ChainBroken(chain.expected, str(exc), path, lineno) from None
                chain.link(
                    path,
                    lineno,
                    record["log_id"],
                    record["seq"],
                    record["prev"],
                    sha256_hex(line),
                    "deferred" in record,
                )
                yield Entry(record, line, path, lineno)


#: What a worker reports of one line: (log_id, seq, prev, line hash, deferred), or why the
#: line is not a record.
_Summary = tuple[str, int, str, str, bool] | str
#: Lines handed to a worker at a time.
_BATCH_LINES = 2000


def _summaries(lines: list[bytes]) -> list[_Summary]:
    """Check each line on its own (runs in a worker process): what the chain needs of it."""
    out: list[_Summary] = []
    for line in lines:
        try:
            record = parse_line(line)
        except RecordError as exc:
            out.append(str(exc))
            continue
        out.append(
            (
                record["log_id"],
                record["seq"],
                record["prev"],
                sha256_hex(line),
                "deferred" in record,
            )
        )
    return out


def _verify_parallel(ordered: list[Path], report: Report, workers: int) -> None:
    """The same checks as :func:`iter_verified`, the per-line work spread over processes.

    This process reads blocks and splits lines; workers check each line on its
    own (JSON, canonical bytes, self-hash) and send back the few fields the
    chain needs; this process then links them in order, so the first fault
    reported is the one the sequential reader reports. At most ``2 * workers``
    batches are in flight, so memory stays bounded.
    """
    chain = _Chain(report, None)
    # fork when this process runs one thread (quick, and it does not re-import the
    # calling script); spawn otherwise, since forking a threaded process is unsafe
    single = threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if single else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    pending: deque[tuple[Path, int, Future[list[_Summary]] | None, bytes]] = deque()

    def settle() -> None:
        path, first, future, marker = pending.popleft()
        if future is None:
            raise chain.unreadable(path, first, marker)
        for lineno, summary in enumerate(future.result(), start=first):
            if isinstance(summary, str):
                raise ChainBroken(chain.expected, summary, path, lineno)
            chain.link(path, lineno, *summary)

    try:
        for path in ordered:
            with open_log_file(path) as handle:
                batch: list[bytes] = []
                first = 1
                for lineno, line in enumerate(_lines(handle), start=1):
                    if line is _TOO_LONG or line is _TORN:
                        if batch:
                            pending.append((path, first, pool.submit(_summaries, batch), b""))
                        pending.append((path, lineno, None, line))
                        batch = []
                        break
                    batch.append(line)
                    if len(batch) >= _BATCH_LINES:
                        pending.append((path, first, pool.submit(_summaries, batch), b""))
                        batch, first = [], lineno + 1
                        while len(pending) > 2 * workers:
                            settle()
                if batch:
                    pending.append((path, first, pool.submit(_summaries, batch), b""))
        while pending:
            settle()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify(
    paths: Iterable[str | os.PathLike[str]],
    checkpoints: Sequence[Checkpoint] | None = None,
    workers: int = 1,
) -> Report:
    """Verify the log made of ``paths``; return a :class:`Report` or raise :class:`ChainBroken`.

    With ``checkpoints`` (verified signatures, see :mod:`.checkpoint`), every
    checkpoint of this log must match the line hash at its seq, and the log
    must reach the latest one: a whole-chain rewrite or a cut-off end fails.

    ``workers``: processes checking lines (default 1: this process alone). More
    only pays on a machine with idle cores and a large log; the verdict is the
    same either way. Checkpoints are matched in this process alone.
    """
    paths = list(paths)
    files = expand_paths(paths)
    report = Report(torn_files=torn_files(paths))
    if workers > 1 and not checkpoints:
        ordered = sorted(files, key=_order_key)
        report.files = ordered
        _verify_parallel(ordered, report, workers)
        if report.records == 0:
            raise ChainBroken(1, "no audit records found in the given files")
        return report
    anchors = {(c.log_id, c.seq): c.hash for c in checkpoints or ()}
    wanted: dict[int, Checkpoint] | None = None
    for entry in iter_verified(files, report, anchors):
        if wanted is None:
            wanted = {c.seq: c for c in checkpoints or () if c.log_id == report.log_id}
        checkpoint = wanted.get(entry.record["seq"])
        if checkpoint is not None:
            if sha256_hex(entry.line) != checkpoint.hash:
                raise ChainBroken(
                    checkpoint.seq,
                    f"the line differs from the hub's signed checkpoint of {checkpoint.time}: "
                    "the chain was rewritten",
                    entry.file,
                    entry.lineno,
                )
            report.checkpoints_checked += 1
            report.last_checkpoint = (checkpoint.seq, checkpoint.time)
    if report.records == 0:
        raise ChainBroken(1, "no audit records found in the given files")
    if checkpoints:
        _check_coverage(report, wanted or {}, checkpoints)
    return report


def _check_coverage(
    report: Report, wanted: Mapping[int, Checkpoint], checkpoints: Sequence[Checkpoint]
) -> None:
    """Every signed checkpoint of this log was inside the verified range."""
    if not wanted:
        others = sorted({c.log_id for c in checkpoints})
        raise ChainBroken(
            1,
            f"none of the {len(checkpoints)} signed checkpoint(s) is for this log "
            f"(log_id {report.log_id}; they name {', '.join(others)}): the log was "
            "replaced, or the checkpoints are another hub's",
        )
    beyond = max(wanted)
    if beyond > report.head_seq:
        raise ChainBroken(
            report.head_seq + 1,
            f"the log ends at seq {report.head_seq} but the hub signed a checkpoint of seq "
            f"{beyond} ({wanted[beyond].time}): records were cut off the end",
        )
    report.checkpoints_before_start = sum(1 for seq in wanted if seq < report.start_seq - 1)
