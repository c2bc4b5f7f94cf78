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

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    expected, prev_hash, log_id = 1, GENESIS, ""
    for path in ordered:
        with open_log_file(path) as handle:
            # readline with a size: a line past the limit is cut there, never read whole
            lines = iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b"")
            for lineno, raw in enumerate(lines, start=1):
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise ChainBroken(
                        expected,
                        f"line {lineno} is longer than {MAX_LINE_BYTES:,} bytes, far beyond any "
                        "audit record: the file was altered or is not an audit log (not read "
                        "further)",
                        path,
                        lineno,
                    )
                if not raw.endswith(b"\n"):
                    raise ChainBroken(
                        expected,
                        "truncated line (no newline at the end of the file: a torn write, "
                        "or the line was cut)",
                        path,
                        lineno,
                    )
                line = raw[:-1]
                try:
                    record = parse_line(line)
                except RecordError as exc:
                    raise ChainBroken(expected, str(exc), path, lineno) from None
                if not log_id:
                    log_id = record["log_id"]
                    report.log_id = log_id
                if record["log_id"] != log_id:
                    raise ChainBroken(
                        expected,
                        f"line belongs to another log (log_id {record['log_id']}, "
                        f"expected {log_id})",
                        path,
                        lineno,
                    )
                seq = record["seq"]
                if expected == 1 and seq > 1 and anchors:
                    anchored = anchors.get((record["log_id"], seq - 1))
                    if anchored is not None and anchored == record["prev"]:
                        expected, prev_hash = seq, anchored
                        report.start_seq = seq
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
                if record["prev"] != prev_hash:
                    raise ChainBroken(
                        seq,
                        "prev does not match the hash of the previous line (this line or "
                        "the one before it was altered or replaced)",
                        path,
                        lineno,
                    )
                prev_hash = sha256_hex(line)
                expected = seq + 1
                report.records += 1
                report.head_seq, report.head_hash = seq, prev_hash
                if "deferred" in record:
                    report.deferred += 1
                yield Entry(record, line, path, lineno)


def verify(
    paths: Iterable[str | os.PathLike[str]],
    checkpoints: Sequence[Checkpoint] | None = None,
) -> Report:
    """Verify the log made of ``paths``; return a :class:`Report` or raise :class:`ChainBroken`.

    With ``checkpoints`` (verified signatures, see :mod:`.checkpoint`), every
    checkpoint of this log must match the line hash at its seq, and the log
    must reach the latest one: a whole-chain rewrite or a cut-off end fails.
    """
    paths = list(paths)
    files = expand_paths(paths)
    report = Report(torn_files=torn_files(paths))
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
