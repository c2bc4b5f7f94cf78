"""The durable, hash-chained audit log: one writer thread per hub.

Why a thread: the hub's event loop must never wait on ``fsync``, and callers
come from asyncio tasks *and* from threads. Every caller hands its event to one
writer thread through a queue; the writer takes whatever has queued up, gives
each event the next ``seq``, chains it, writes the whole batch with one
``write`` and makes it durable with one ``fdatasync`` (group commit), and only
then resolves the callers' futures. So "record() returned" means "the line is
on disk", and under load one sync covers many events.

Rotation: when the active file would grow past ``max_bytes`` it is renamed to
``<name>.<first seq, 12 digits>`` (so names sort in log order) and a new
active file starts; the chain simply continues (``prev`` of the new file's
first line is the hash of the old file's last line).

Crash recovery: on open, a torn last line (a write cut short by a crash) is
moved to ``<name>.torn-<UTC time>``, the file is cut back to its last good
line, a warning is logged, and an ``audit-recovered`` event records it in the
trail itself.

When the disk is full or read-only the hub keeps running: the writer logs an
ERROR, keeps the events in a bounded in-memory backlog, retries with backoff,
and raises :class:`AuditUnavailable` to each caller whose event is not durable,
so the caller can fail closed. Backlogged events are written (marked
``deferred``) as soon as the disk accepts them; when the backlog is full new
events are refused, again loudly. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import gzip
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from .chain import GENESIS, RecordError, parse_line, seal, sha256_hex
from .events import hub_event, sanitize

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_BATCH = 1024  #: events per group commit at most
_ROTATED = re.compile(r"\.(\d{12})$")
_ROTATED_GZ = re.compile(r"\.(\d{12})\.gz$")
_TAIL_CHUNK = 64 * 1024
#: Most bytes after the last valid record that start-up sets aside as a torn tail: one line
#: as long as ``audit verify`` accepts (its ``MAX_LINE_BYTES``). A crash cuts at most one
#: line short; more is not a crash, and start-up refuses it instead of reading it whole.
MAX_TORN_BYTES = 1024 * 1024


class AuditUnavailable(RuntimeError):
    """The event is not durable: the log cannot be written right now.

    The event is kept in memory and written (marked ``deferred``) when the
    disk recovers, unless this is :class:`AuditBacklogFull`. Callers that gate
    access on the audit trail should refuse the access.
    """


class AuditBacklogFull(AuditUnavailable):
    """The log has been failing long enough to fill the backlog; event refused."""


class Sink(Protocol):
    """Something that receives every record after it is durable in the log.

    A sink with a ``follow(audit_log)`` method is called with the log once it is
    open; such a sink reads the records from the log's files itself, and
    ``accept`` only tells it that more are durable (see :mod:`.spool`).
    """

    def accept(self, records: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Pending:
    event: dict[str, Any]
    time: str
    future: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future)
    deferred: dict[str, str] | None = None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of the log at ``path``, oldest first.

    A rotated file may be gzip-compressed (``<name>.<seq>.gz``, see
    :mod:`.retention`); read any of them with :func:`open_log_file`. When a
    compression was cut short and both forms exist, the plain file is listed.
    """
    found: dict[str, Path] = {}
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            name = candidate.name
            if not name.startswith(path.name + "."):
                continue
            match = _ROTATED.search(name) or _ROTATED_GZ.search(name)
            if match is None or len(name) != len(path.name) + 13 + (
                3 if name.endswith(".gz") else 0
            ):
                continue
            seq = match.group(1)
            if seq not in found or not name.endswith(".gz"):
                found[seq] = candidate
    return [found[seq] for seq in sorted(found)]


def open_log_file(path: Path) -> BinaryIO:
    """Open a log file for reading, plain or gzip-compressed (by its ``.gz`` name)."""
    if path.name.endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class AuditLog:
    """Append-only, hash-chained JSON Lines audit log with one writer thread.

    ``record``/``record_sync`` return the event's ``seq`` once it is durable.
    Construct one per hub process; a lock file (``<name>.lock``) stops a second
    writer, in this process or another, from forking the chain.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        group_commit: bool = True,
        max_backlog: int = 10_000,
        retry_interval: float = 1.0,
        max_retry_interval: float = 30.0,
        sinks: Iterable[Sink] = (),
        on_rotate: Callable[[Path], None] | None = None,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        self.path = Path(path).absolute()
        self.max_bytes = max_bytes
        self.group_commit = group_commit
        self.max_backlog = max_backlog
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.sinks: list[Sink] = list(sinks)
        #: Called on the writer thread with each newly rotated file (keep it quick).
        self.on_rotate = on_rotate

        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._backlog: deque[_Pending] = deque()
        self._closing = False
        self._retry_at = 0.0
        self._retry_delay = retry_interval
        self._failure: str | None = None  # errno name while failing
        self._last_error_log = 0.0
        self._last_attempt = 0.0

        # Writer-thread state (also set here, before the thread starts).
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._opened = False  # recovery done and head known
        self.log_id = ""
        self._seq = 0
        self._prev = GENESIS
        self._size = 0
        self._file_first_seq: int | None = None

        # Sinks that read their backlog from the log itself start from its head: told
        # now, and again if the log only opens later (a disk that was not writable).
        self._followers = [sink for sink in self.sinks if hasattr(sink, "follow")]
        self._opens_late = False
        self._try_open()
        for sink in self._followers:
            sink.follow(self)
        self._opens_late = True
        self._thread = threading.Thread(target=self._run, name="audit-log-writer", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- public API
    @property
    def head(self) -> tuple[int, str]:
        """``(seq, line hash)`` of the last durable record (0, zeros when empty)."""
        return self._seq, self._prev

    @property
    def healthy(self) -> bool:
        """False while the log cannot be written (events are being held back)."""
        return self._failure is None and self._opened

    @property
    def failure(self) -> str | None:
        """Why the log cannot be written (an errno name such as ENOSPC), or None."""
        return self._failure

    @property
    def backlog(self) -> int:
        """Events not durable yet: queued for the writer, or held while the disk fails."""
        with self._cond:
            return len(self._queue) + len(self._backlog)

    def submit(self, event: Mapping[str, Any]) -> concurrent.futures.Future[int]:
        """Queue an event; the future resolves to its ``seq`` once durable."""
        item = _Pending(sanitize(event), utc_now())
        with self._cond:
            if self._closing:
                raise RuntimeError("the audit log is closed")
            if self._failure and len(self._backlog) + len(self._queue) >= self.max_backlog:
                log.error(
                    "Audit log %s: backlog full (%d events held since the disk failed with %s); "
                    "refusing a new event",
                    self.path,
                    self.max_backlog,
                    self._failure,
                )
                raise AuditBacklogFull(
                    f"audit log not writable ({self._failure}) and its backlog is full; "
                    "event not recorded"
                )
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def record_sync(self, event: Mapping[str, Any]) -> int:
        """Record an event and block until it is durable; returns its ``seq``."""
        return self.submit(event).result()

    async def record(self, event: Mapping[str, Any]) -> int:
        """Record an event; returns its ``seq`` once durable, without blocking the loop."""
        return await asyncio.wrap_future(self.submit(event))

    def close(self) -> None:
        """Write what is queued, stop the writer, release the lock."""
        with self._cond:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
                self._cond.notify()
        if not already:
            self._thread.join()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("Audit sink %r failed to close", sink)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (
                    self._queue
                    or self._closing
                    or (self._backlog and time.monotonic() >= self._retry_at)
                ):
                    if self._backlog:
                        self._cond.wait(max(0.0, self._retry_at - time.monotonic()))
                    else:
                        self._cond.wait()
                now = time.monotonic()
                if (
                    self._failure
                    and self._queue
                    and not self._closing
                    and now < self._retry_at
                    and now - self._last_attempt < self.retry_interval
                ):
                    # Failing, and just tried: hold new events at once instead of
                    # rewriting the whole backlog for each one (a flood stays cheap).
                    self._defer(list(self._queue), self._failure)
                    self._queue.clear()
                    continue
                self._last_attempt = now
                # Held events go first, so the trail keeps the order things happened in.
                # A batch is bounded so one sync never waits on an unbounded write.
                batch: list[_Pending] = []
                while len(batch) < MAX_BATCH and (self._backlog or self._queue):
                    source = self._backlog if self._backlog else self._queue
                    batch.append(source.popleft())
            if batch:
                self._commit(batch)
            with self._cond:
                if self._closing and not self._queue and (not self._backlog or self._failure):
                    break
        self._shutdown()

    def _defer(self, items: list[_Pending], reason: str, *, oldest: bool = False) -> None:
        """Hold items in the backlog and fail their callers' futures (cond held).

        ``oldest``: the items precede everything held (a failed batch), so they
        go to the front and the trail keeps the order things happened in.
        """
        for item in items:
            if item.deferred is None:
                item.deferred = {"since": item.time, "error": reason}
            if not item.future.done():
                item.future.set_exception(
                    AuditUnavailable(
                        f"audit log not writable ({reason}); event kept in memory "
                        "and written when the disk recovers"
                    )
                )
        if oldest:
            self._backlog.extendleft(reversed(items))
        else:
            self._backlog.extend(items)

    def _commit(self, batch: list[_Pending]) -> None:
        done = 0
        try:
            self._ensure_open()
            if self.group_commit:
                self._write(batch)
                done = len(batch)
            else:
                for item in batch:
                    self._write([item])
                    done += 1
        except OSError as exc:
            self._on_failure(batch[done:], exc)
        except Exception as exc:  # a bug must not kill the writer thread
            log.exception("Audit log %s: unexpected error while writing", self.path)
            self._on_failure(batch[done:], OSError(errno.EIO, str(type(exc).__name__)))
        else:
            if self._failure is not None:
                log.warning(
                    "Audit log %s is writable again; held events written, now at seq %d",
                    self.path,
                    self._seq,
                )
                self._failure = None
                self._retry_delay = self.retry_interval

    def _on_failure(self, remaining: list[_Pending], exc: OSError) -> None:
        reason = _errno_name(exc)
        with contextlib.suppress(OSError):
            self._undo_partial_write()
        now = time.monotonic()
        with self._cond:
            first = self._failure is None
            self._failure = reason
            self._retry_at = now + self._retry_delay
            delay = self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.max_retry_interval)
            self._defer(remaining, reason, oldest=True)
            held = len(self._backlog)
        # Loud, but not a log flood: the first failure, then at most every max_retry_interval.
        if not first and now - self._last_error_log < self.max_retry_interval:
            return
        self._last_error_log = now
        log.error(
            "Audit log %s is not writable (%s: %s): %d event(s) held in memory, retrying in "
            "%.0fs; callers are told their events are not durable",
            self.path,
            reason,
            exc.strerror or type(exc).__name__,
            held,
            delay,
        )

    def _undo_partial_write(self) -> None:
        """Cut the active file back to its last durable byte after a failed write."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                os.close(self._fd)
                self._fd = None
                raise

    def _write(self, items: list[_Pending]) -> None:
        seq, prev = self._seq, self._prev
        lines: list[bytes] = []
        records: list[dict[str, Any]] = []
        for item in items:
            seq += 1
            fields = dict(item.event)
            if item.deferred is not None:
                fields["deferred"] = item.deferred
            fields.update(log_id=self.log_id, seq=seq, time=item.time, prev=prev)
            record, line = seal(fields)
            prev = sha256_hex(line)
            lines.append(line)
            records.append(record)
        data = b"\n".join(lines) + b"\n"
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            self._ensure_open()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fdatasync(self._fd)
        # Durable: advance the head, hand the records on, then tell the callers.
        if self._file_first_seq is None:
            self._file_first_seq = self._seq + 1
        self._seq, self._prev = seq, prev
        self._size += len(data)
        for sink in self.sinks:
            try:
                sink.accept(records)
            except Exception:
                log.exception("Audit sink %r failed; the events are safe in the log", sink)
        for item, record in zip(items, records, strict=True):
            if not item.future.done():
                item.future.set_result(record["seq"])

    def _rotate(self) -> None:
        assert self._fd is not None and self._file_first_seq is not None
        target = self.path.with_name(f"{self.path.name}.{self._file_first_seq:012d}")
        if target.exists() or target.with_name(target.name + ".gz").exists():
            raise OSError(errno.EEXIST, f"rotated audit file {target.name} already exists")
        os.close(self._fd)
        self._fd = None
        os.rename(self.path, target)
        self._size = 0
        self._file_first_seq = None
        self._fsync_dir()
        log.info("Audit log rotated: %s (from seq %d)", target.name, int(target.suffix[1:]))
        if self.on_rotate is not None:
            try:
                self.on_rotate(target)
            except Exception:
                log.exception("Audit log %s: the rotation hook failed", self.path)

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _shutdown(self) -> None:
        with self._cond:
            lost = list(self._backlog)
            self._backlog.clear()
        if lost:
            log.error(
                "Audit log %s: %d event(s) could not be written before shutdown (%s); "
                "their callers were told they were not durable",
                self.path,
                len(lost),
                self._failure,
            )
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # ------------------------------------------------------- open and recovery
    def _try_open(self) -> None:
        try:
            self._ensure_open()
        except OSError as exc:
            self._failure = _errno_name(exc)
            log.error(
                "Audit log %s cannot be opened (%s: %s); the hub keeps running, events are "
                "held in memory and refused once the backlog is full",
                self.path,
                self._failure,
                exc.strerror or exc,
            )

    def _ensure_open(self) -> None:
        if self._fd is not None:
            return
        if not self._opened:
            self._lock()
            self._recover()
            self._opened = True
            if self._opens_late:  # not at construction: the followers learn the head now
                for sink in self._followers:
                    sink.follow(self)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size > self._size:  # bytes of a failed write: not acknowledged, not kept
                os.ftruncate(fd, self._size)
            elif size < self._size:
                raise OSError(errno.EIO, "the active audit file shrank while the hub was running")
            if size == 0:
                self._fsync_dir()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OSError(
                    exc.errno, "another writer holds the audit log (one writer per log)"
                ) from None
            raise
        self._lock_fd = fd

    def _recover(self) -> None:
        """Find the chain head, set aside a torn tail, open the active file."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            last: dict[str, Any] | None = None
            last_line = b""
            good_end = 0
            if size:
                good_end, last, last_line = _scan_tail(fd, size)
                if good_end < size:
                    self._set_aside(fd, good_end, size, last)
                if last is not None:
                    first = _first_record(fd)
                    self._file_first_seq = first["seq"] if first else last["seq"]
            if last is None:
                rotated = rotated_files(self.path)
                if rotated:
                    end, old_size, last, last_line = _tail_of_rotated(rotated[-1])
                    if last is None or end != old_size:
                        raise OSError(
                            errno.EIO,
                            f"rotated audit file {rotated[-1].name} does not end with a valid "
                            "record; run `jupyterhub-smart audit verify`",
                        )
            if last is None:
                self.log_id = secrets.token_hex(16)
                self._seq, self._prev = 0, GENESIS
                log.info("Audit log %s: new log %s", self.path, self.log_id)
            else:
                self.log_id = last["log_id"]
                self._seq, self._prev = last["seq"], sha256_hex(last_line)
                log.info(
                    "Audit log %s opened: log %s at seq %d, head %s",
                    self.path,
                    self.log_id,
                    self._seq,
                    self._prev,
                )
            self._size = good_end
            if size == 0:
                self._fsync_dir()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _set_aside(self, fd: int, good_end: int, size: int, last: Mapping[str, Any] | None) -> None:
        torn = os.pread(fd, size - good_end, good_end)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")
        out = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(out, torn)
            os.fsync(out)
        finally:
            os.close(out)
        os.ftruncate(fd, good_end)
        os.fsync(fd)
        self._fsync_dir()
        after = last["seq"] if last else 0
        log.warning(
            "Audit log %s ended with a torn or invalid tail (%d bytes, e.g. a crash during a "
            "write); moved it to %s and continuing the chain after seq %d",
            self.path,
            len(torn),
            aside.name,
            after,
        )
        event = hub_event(
            "audit-recovered",
            outcome="failure",
            description=(
                f"torn tail of {len(torn)} bytes after seq {after} set aside to {aside.name} "
                f"(sha256 {sha256_hex(torn)})"
            ),
        )
        with self._cond:
            self._queue.appendleft(_Pending(sanitize(event), utc_now()))


def _scan_tail(fd: int, size: int) -> tuple[int, dict[str, Any] | None, bytes]:
    """Offset just after the last valid line, that record and its bytes.

    Reads backwards in growing chunks so that opening a large log costs only
    its tail. Everything after the returned offset is torn or invalid, and at
    most :data:`MAX_TORN_BYTES` long: past that, OSError (EIO) says so, having
    read no more than twice that (the tail and the longest valid line before it).
    """
    floor = max(0, size - 2 * MAX_TORN_BYTES - 2)
    start = max(floor, size - _TAIL_CHUNK)
    while True:
        data = os.pread(fd, size - start, start)
        end = len(data)
        # Complete lines end with b"\n"; the segment after the last newline is torn.
        while True:
            nl = data.rfind(b"\n", 0, end)
            if nl < 0:
                break
            if size - (start + nl + 1) > MAX_TORN_BYTES:
                raise _oversized_tail(size)
            line_start = data.rfind(b"\n", 0, nl) + 1
            if line_start == 0 and start > floor:
                break  # this line may begin before the chunk: read more
            if line_start == 0 and start > 0:
                raise _oversized_tail(size)  # a line longer than any record: not a crash
            try:
                record = parse_line(data[line_start:nl])
            except RecordError:
                end = line_start
                if end == 0:
                    break
                continue
            return start + nl + 1, record, data[line_start:nl]
        if size - start > MAX_TORN_BYTES and (start == 0 or start == floor):
            raise _oversized_tail(size)
        if start == 0:
            return 0, None, b""
        start = max(floor, start - 4 * (size - start))


def _oversized_tail(size: int) -> OSError:
    return OSError(
        errno.EIO,
        f"the last {MAX_TORN_BYTES:,} bytes of the {size:,}-byte audit file hold no complete "
        "valid record: more than a crash can tear (at most one line); the file is left as "
        "it is. Check it with `jupyterhub-smart audit verify`, then move the damaged file "
        "aside before the hub starts again",
    )


def _tail_of_rotated(path: Path) -> tuple[int, int, dict[str, Any] | None, bytes]:
    """``_scan_tail`` of a rotated file, plain or compressed: (end, size, record, line)."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as packed:
            data = packed.read()
        if not data.endswith(b"\n"):
            return 0, len(data), None, b""
        line = data[data.rfind(b"\n", 0, len(data) - 1) + 1 : -1]
        try:
            return len(data), len(data), parse_line(line), line
        except RecordError:
            return 0, len(data), None, b""
    with open(path, "rb") as old:
        size = os.fstat(old.fileno()).st_size
        end, last, last_line = _scan_tail(old.fileno(), size)
    return end, size, last, last_line


def _first_record(fd: int) -> dict[str, Any] | None:
    chunk = b""
    while b"\n" not in chunk and len(chunk) < 16 * _TAIL_CHUNK:
        more = os.pread(fd, _TAIL_CHUNK, len(chunk))
        if not more:
            break
        chunk += more
    line = chunk.split(b"\n", 1)[0]
    try:
        return parse_line(line)
    except RecordError:
        return None
