"""Retention of rotated audit files: compress them, delete those past the policy, say so.

A log rotates into ``<name>.<first seq>`` files (:mod:`.log`). Kept for years
they add up, so after each rotation (and at start) this:

1. gzip-compresses every rotated file not yet compressed
   (``<name>.<seq>.gz``; written to a temporary name, fsynced, renamed, then
   the plain file removed; ``verify`` and the writer read both forms);
2. deletes the oldest rotated files while one is older than ``max_age_days``
   or all files together exceed ``max_bytes`` (the active file is never
   deleted, nor the newest rotated one, which holds the chain's link to it).

Deleting part of a hash chain would leave a log that no longer starts at seq 1.
So before deleting, the hub signs a checkpoint of the last deleted record
(seq and line hash, :mod:`.checkpoint`), appends it to the checkpoint file and
records an ``audit-retention`` event carrying it: the deletion is itself on
the trail, and ``audit verify --checkpoints ... --jwks ...`` accepts the log
from the retained start because a signed checkpoint vouches for the link.
Without a signing key nothing is deleted (an ERROR says why): a trail that
lost its beginning without a signed anchor could not be told from a
tampered one.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .chain import parse_line, sha256_hex
from .checkpoint import Checkpointer
from .log import open_log_file, rotated_files

log = logging.getLogger(__name__)

_DAY = 86400.0


class Retention:
    """Compress and expire the rotated files of one :class:`~.log.AuditLog`.

    Listed among the log's sinks so that it is closed with the log; the work
    runs on its own thread, woken by the log's rotation hook.
    """

    def __init__(
        self,
        *,
        compress: bool = True,
        max_age_days: float = 0.0,
        max_bytes: int = 0,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        if max_age_days < 0 or max_bytes < 0:
            raise ValueError("retention limits must be 0 (none) or positive")
        self.compress = compress
        self.max_age = max_age_days * _DAY
        self.max_bytes = max_bytes
        self.checkpointer = checkpointer
        self.log: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._refused_logged = False
        self._thread = threading.Thread(target=self._run, name="audit-retention", daemon=True)

    def attach(self, audit_log: Any) -> None:
        """Work on ``audit_log``'s files (set ``audit_log.on_rotate = retention.rotated``)."""
        self.log = audit_log
        self._thread.start()
        self._wake.set()  # files left from before this start

    def rotated(self, _path: Path) -> None:
        """The log's rotation hook: wake the worker (returns at once)."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the worker has handled every rotation so far (for tests and shutdown)."""
        return self._idle.wait(timeout)

    # ---------------------------------------------------------- as a sink
    def accept(self, records: Any) -> None:
        """Nothing per batch: rotations wake the worker."""

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(30)

    # ---------------------------------------------------------- the work
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_once()
            except Exception:
                log.exception("Audit retention: unexpected error; will try at the next rotation")
            if not self._wake.is_set():
                self._idle.set()

    def run_once(self) -> None:
        """Compress, then delete what the policy no longer keeps."""
        path = Path(self.log.path)
        if self.compress:
            for rotated in rotated_files(path):
                if not rotated.name.endswith(".gz"):
                    compress_file(rotated)
        if self.max_age or self.max_bytes:
            self._expire(path)

    def _expire(self, path: Path) -> None:
        files = rotated_files(path)
        doomed: list[Path] = []
        reasons: set[str] = set()
        now = time.time()
        total = sum(_size(f) for f in files) + _size(path)
        for candidate in files[:-1]:  # the newest rotated file links to the active one
            too_old = self.max_age and now - candidate.stat().st_mtime > self.max_age
            too_big = self.max_bytes and total > self.max_bytes
            if not (too_old or too_big):
                break
            doomed.append(candidate)
            reasons.add(f"older than {self.max_age / _DAY:g} days" if too_old else "")
            reasons.add(f"over {self.max_bytes} bytes in all" if too_big else "")
            total -= _size(candidate)
        doomed = self._undelivered_kept(files, doomed)
        if not doomed:
            return
        if self.checkpointer is None:
            if not self._refused_logged:
                log.error(
                    "Audit retention: %d rotated file(s) are past retention but are kept: "
                    "deleting them needs a signed checkpoint to anchor the rest of the chain "
                    "(set audit_checkpoint_key_path or an issuer's private_key_path)",
                    len(doomed),
                )
                self._refused_logged = True
            return
        last_seq, last_hash = _last_line(doomed[-1])
        first_seq = _first_seq(doomed[0])
        why = " and ".join(sorted(r for r in reasons if r))
        self.checkpointer.checkpoint(
            seq=last_seq,
            hash=last_hash,
            action="audit-retention",
            description=(
                f"deleted {len(doomed)} rotated file(s) holding seq {first_seq}..{last_seq} "
                f"({why}); the log now starts at seq {last_seq + 1}, anchored by the signed "
                f"checkpoint of seq {last_seq}"
            ),
        )
        for doomed_file in doomed:
            doomed_file.unlink()
        _fsync_dir(path.parent)
        log.warning(
            "Audit retention: deleted %s (seq %d..%d, %s)",
            ", ".join(f.name for f in doomed),
            first_seq,
            last_seq,
            why,
        )

    def _undelivered_kept(self, files: list[Path], doomed: list[Path]) -> list[Path]:
        """``doomed`` less the files holding records a sink has not delivered yet."""
        floors = [
            sink.delivered_seq()
            for sink in getattr(self.log, "sinks", ())
            if hasattr(sink, "delivered_seq")
        ]
        floors = [f for f in floors if f is not None]
        if not floors:
            return doomed
        floor = min(floors)
        kept = []
        for index, candidate in enumerate(doomed):
            following = files[index + 1].name.removesuffix(".gz")
            last_seq = int(following.rsplit(".", 1)[1]) - 1
            if last_seq > floor:
                log.warning(
                    "Audit retention: %s is past retention but kept until every sink has "
                    "delivered it (a sink is at seq %d)",
                    candidate.name,
                    floor,
                )
                break
            kept.append(candidate)
        return kept


def compress_file(path: Path) -> Path:
    """gzip ``path`` to ``path.gz`` durably, then remove ``path``; returns the new path."""
    target = path.with_name(path.name + ".gz")
    if target.exists():  # a compression cut short after the rename: the .gz is whole
        path.unlink()
        return target
    tmp = path.with_name(f".{target.name}.tmp")
    stat = path.stat()
    with path.open("rb") as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
            shutil.copyfileobj(src, packed, 1024 * 1024)
        raw.flush()
        os.fsync(raw.fileno())
    os.chmod(tmp, 0o600)
    os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # its age is the rotation's
    os.replace(tmp, target)
    _fsync_dir(path.parent)
    path.unlink()
    _fsync_dir(path.parent)
    return target


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _last_line(path: Path) -> tuple[int, str]:
    """Seq and line hash of the last record of a (rotated, verified-on-read) file."""
    last = b""
    with open_log_file(path) as handle:
        for raw in handle:
            if raw.strip():
                last = raw.rstrip(b"\n")
    record = parse_line(last)
    return int(record["seq"]), sha256_hex(last)


def _first_seq(path: Path) -> int:
    with open_log_file(path) as handle:
        return int(parse_line(handle.readline().rstrip(b"\n"))["seq"])


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
