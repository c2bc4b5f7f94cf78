"""Forward-and-retry machinery shared by the audit sinks (FHIR server, syslog).

A sink is a copy of the trail kept somewhere the hub's administrators do not
control alone. Delivery must survive the receiver being down for hours and the
hub restarting meanwhile, so every sink works the same way:

1. The log itself is the backlog. A sink attached to an :class:`~.log.AuditLog`
   *follows* it (:meth:`SpoolingSink.follow`): the writer only wakes the sink
   after each durable batch (no copy, no fsync, no encoding on the writer
   thread, so sinks cost the writer nothing), and the sink's thread reads the
   records after its *cursor* from the log files (live, rotated, gzipped),
   encodes each and delivers it in order.
2. The cursor (``<spool>/cursor.json``: the log id, the ``seq`` and line hash
   of the last record delivered, and where the next line starts) is written
   and fsynced by the sink's thread, after every 500 deliveries and whenever
   it stops or waits. The first line read after the cursor must chain to it
   (its ``prev`` is the cursor's hash), so a cursor never silently skips or
   repeats part of another log. A new cursor starts at the log's head: a sink
   added later receives what is written from then on.
3. A line the receiver cannot take now is retried with exponential backoff
   (capped, jittered); a line it refuses for good goes to
   ``<spool>/rejected/`` with an ERROR log, so one bad message cannot block
   the rest.

A sink used without a log (``accept`` called directly, or spool files left by
an earlier version) spools instead: each batch encoded into
``<spool>/<first>-<last seq>-<log id>.jsonl`` and fsynced, delivered first.

Delivery is at-least-once: after a crash, what was sent since the cursor was
last written is sent again. Each message carries the chain's log id and seq
to de-duplicate.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from .chain import sha256_hex
from .log import open_log_file, rotated_files

log = logging.getLogger(__name__)

#: ``<first seq>-<last seq>-<log id>.jsonl``, as :meth:`SpoolingSink.accept` names a batch.
_SPOOL_NAME = re.compile(r"^\d{12}-\d{12}-[0-9a-f]+\.jsonl$")
#: What :meth:`SpoolingSink._send` answers for one line.
SENT, RETRY, REJECTED = "sent", "retry", "rejected"
#: Deliveries between two writes of the cursor (what a crash may send twice).
CURSOR_EVERY = 500
#: While the writer has events waiting, a sink pauses (sleeping, so the writer has the
#: interpreter) for up to this many seconds, then delivers a burst of ``YIELD_BURST``
#: records anyway: the trail first, its copies a moment later, and never starved.
YIELD_FOR = 1.0
YIELD_BURST = 200
_ROTATED_SEQ = re.compile(r"\.(\d{12})(\.gz)?$")


class SpoolingSink:
    """Spool every record durably, deliver in order from a thread; subclasses say how."""

    #: Name of the sender thread (and of the sink in log lines).
    kind = "audit"

    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        *,
        initial_backoff: float = 1.0,
        max_backoff: float = 300.0,
    ) -> None:
        self.spool = Path(spool_dir)
        self.rejected = self.spool / "rejected"
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._log: Any = None  # the AuditLog followed, once follow() is called
        self._cursor: dict[str, Any] | None = None
        self._cursor_path = self.spool / "cursor.json"
        # follow() (the log's thread) and the sender both find or save the cursor; one
        # at a time, or their writes of the same temporary file race
        self._cursor_lock = threading.RLock()
        self._thread = threading.Thread(
            target=self._run, name=f"audit-{self.kind}-sink", daemon=True
        )

    def _start(self) -> None:
        """Start the sender (subclasses call this at the end of their ``__init__``)."""
        self._thread.start()

    # ------------------------------------------------------- what subclasses give
    def _encode(self, record: Mapping[str, Any]) -> bytes:
        """One record as one spool line (no newline inside)."""
        raise NotImplementedError

    def _send(self, line: bytes) -> str:
        """Deliver one line: :data:`SENT`, :data:`RETRY` or :data:`REJECTED`."""
        raise NotImplementedError

    def _idle(self) -> None:
        """Called when the spool is empty (e.g. to drop an idle connection)."""

    def _closed(self) -> None:
        """Called once the sender has stopped (release connections)."""

    # ------------------------------------------------------------ from the log
    def follow(self, audit_log: Any) -> None:
        """Read records from ``audit_log``'s files from now on (the log calls this when open)."""
        self._log = audit_log
        self._ensure_cursor()  # now, before the writer moves on: nothing after the head is missed
        self._wake.set()

    def accept(self, records: Sequence[Mapping[str, Any]]) -> None:
        """A durable batch: wake the sender (following a log), or spool it (no log)."""
        if self._log is not None:
            self._wake.set()
            return
        if not records:
            return
        # The log id keeps a new log (same seq numbers) from overwriting an old spool.
        name = f"{records[0]['seq']:012d}-{records[-1]['seq']:012d}-{records[0]['log_id']}.jsonl"
        data = b"".join(self._encode(r) + b"\n" for r in records)
        atomic_write(self.spool / name, data)
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop sending; what is not delivered stays spooled for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._closed()

    def delivered_seq(self) -> int | None:
        """The last ``seq`` delivered from the followed log (None: not following one)."""
        if self._log is None:
            return None
        cursor = self._cursor
        return int(cursor["seq"]) if cursor is not None else 0

    def pending(self) -> int:
        """Records not delivered yet: behind the cursor in the log, and lines in spool files.

        The sender thread deletes a spool file once it is delivered, possibly
        between listing the spool and reading the file: such a file counts as 0.
        """
        count = 0
        if self._log is not None:
            cursor = self._cursor or self._load_cursor()
            head = self._log.head[0]
            if cursor is None or cursor.get("log_id") != self._log.log_id:
                count += 0 if cursor is None else head
            else:
                count += max(0, head - int(cursor["seq"]))
        for spooled in self._spooled():
            try:
                count += len(spooled.read_bytes().splitlines())
            except FileNotFoundError:
                continue
        return count

    # ------------------------------------------------------------ sender thread
    def _spooled(self) -> list[Path]:
        """Spool files, in log order (only names :meth:`accept` writes: never another file)."""
        return sorted(p for p in self.spool.glob("*.jsonl") if _SPOOL_NAME.match(p.name))

    def _run(self) -> None:
        backoff = self.initial_backoff
        while not self._stop.is_set():
            try:
                delivered_all = self._drain()
            except Exception:
                log.exception("Audit %s sink %r: unexpected error; will retry", self.kind, self)
                delivered_all = False
            if delivered_all:
                backoff = self.initial_backoff
                self._idle()
                self._wake.wait()
            elif self._stop.is_set():
                break
            else:
                self._wake.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.max_backoff)
            self._wake.clear()
        self._idle()

    def _drain(self) -> bool:
        """Send spooled lines, then the log after the cursor; False if the receiver is down."""
        if not self._drain_spool():
            return False
        return self._drain_log() if self._log is not None else True

    # ----------------------------------------------------------- the cursor
    def _load_cursor(self) -> dict[str, Any] | None:
        try:
            cursor = orjson.loads(self._cursor_path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            log.error(
                "Audit %s sink %r: %s is unreadable; starting at the log's head",
                self.kind,
                self,
                self._cursor_path,
            )
            return None
        return cursor if isinstance(cursor, dict) else None

    def _save_cursor(self) -> None:
        with self._cursor_lock:
            if self._cursor is not None:
                atomic_write(self._cursor_path, orjson.dumps(self._cursor))

    def _start_cursor(self) -> dict[str, Any] | None:
        """The cursor of a sink that has none: the log's head (None while the log is not open)."""
        audit_log = self._log
        if not audit_log.log_id:
            return None
        seq, line_hash = audit_log.head
        first = getattr(audit_log, "_file_first_seq", None)
        if first is None:  # the live file is empty: the next line starts it
            cursor = {"file": seq + 1, "offset": 0}
        else:
            cursor = {"file": first, "offset": getattr(audit_log, "_size", 0)}
        return {"log_id": audit_log.log_id, "seq": seq, "hash": line_hash, **cursor}

    def _ensure_cursor(self) -> dict[str, Any] | None:
        with self._cursor_lock:
            return self._find_cursor()

    def _find_cursor(self) -> dict[str, Any] | None:
        """The cursor: loaded, or started at the log's head, and saved (under the lock)."""
        if self._cursor is None:
            cursor = self._load_cursor()
            if cursor is not None and cursor.get("log_id") != self._log.log_id:
                if self._log.log_id:
                    log.warning(
                        "Audit %s sink %r: the cursor is of another log; delivering this log "
                        "from its start",
                        self.kind,
                        self,
                    )
                    cursor = {
                        "log_id": self._log.log_id,
                        "seq": 0,
                        "hash": "",
                        "file": 1,
                        "offset": 0,
                    }
                else:
                    cursor = None
            self._cursor = cursor or self._start_cursor()
            if self._cursor is not None:
                self._save_cursor()
        return self._cursor

    def _drain_log(self) -> bool:
        """Deliver the log's records after the cursor, in order."""
        cursor = self._ensure_cursor()
        if cursor is None:
            return True  # the log is not open yet: woken again when it writes
        sent = 0
        forced = 0
        try:
            for seq, line, file_seq, end in self._records(cursor):
                if forced:
                    forced -= 1
                elif self._log.backlog and not self._yield_to_writer():
                    forced = YIELD_BURST  # busy for a whole YIELD_FOR: deliver some anyway
                record = orjson.loads(line)
                encoded = self._encode(record)
                outcome = RETRY if self._stop.is_set() else self._send(encoded)
                if outcome == RETRY:
                    return False
                if outcome == REJECTED:
                    self.rejected.mkdir(exist_ok=True, mode=0o700)
                    with (self.rejected / f"{cursor['log_id']}.jsonl").open("ab") as out:
                        out.write(encoded + b"\n")
                cursor.update(seq=seq, hash=sha256_hex(line), file=file_seq, offset=end)
                sent += 1
                if sent % CURSOR_EVERY == 0:
                    self._save_cursor()
        finally:
            if sent:
                self._save_cursor()
        return True

    def _yield_to_writer(self) -> bool:
        """Wait while the writer has events to make durable: True once it has none, False
        after YIELD_FOR seconds (or when stopping)."""
        until = time.monotonic() + YIELD_FOR
        while self._log.backlog:
            if self._stop.is_set() or time.monotonic() >= until:
                return False
            time.sleep(0.005)
        return True

    def _records(self, cursor: dict[str, Any]) -> Iterator[tuple[int, bytes, int, int]]:
        """(seq, line, first seq of its file, offset after it) of each durable record after
        the cursor, across the live, rotated and gzipped files."""
        live = Path(self._log.path)
        files: dict[int, Path] = {}
        for rotated in rotated_files(live):
            match = _ROTATED_SEQ.search(rotated.name)
            if match:
                files[int(match.group(1))] = rotated
        live_first = getattr(self._log, "_file_first_seq", None)
        if live_first is not None:
            files[live_first] = live
        head = self._log.head[0]
        expected = int(cursor["seq"]) + 1
        if expected > head:
            return
        starts = sorted(f for f in files if f <= expected)
        if not starts:
            raise RuntimeError(f"no log file holds seq {expected} any more (deleted?)")
        first = starts[-1]
        if cursor.get("file") in files and int(cursor["file"]) <= expected:
            first = int(cursor["file"])
        chained = bool(cursor.get("hash"))
        for file_seq in sorted(f for f in files if f >= first):
            path = files[file_seq]
            skip = int(cursor["offset"]) if file_seq == cursor.get("file") else 0
            with open_log_file(path) as handle:
                if skip:
                    handle.seek(skip)
                pos = skip
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        return  # being written: the rest next time
                    line = raw[:-1]
                    pos += len(raw)
                    record = orjson.loads(line)
                    seq = record.get("seq")
                    if not isinstance(seq, int) or seq < expected:
                        continue
                    if seq > head:
                        return
                    if seq != expected or (chained and record.get("prev") != cursor["hash"]):
                        raise RuntimeError(
                            f"seq {seq} in {path.name} does not follow the cursor (seq "
                            f"{expected - 1}): the log was changed; run `jupyterhub-smart audit "
                            "verify`; delivery stops until it is resolved"
                        )
                    chained = True
                    yield seq, line, file_seq, pos
                    expected += 1

    def _drain_spool(self) -> bool:
        """Send spooled lines in order; False if the receiver is unreachable now."""
        for path in self._spooled():
            lines = path.read_bytes().splitlines()
            while lines:
                outcome = RETRY if self._stop.is_set() else self._send(lines[0])
                if outcome == RETRY:
                    atomic_write(path, b"".join(line + b"\n" for line in lines))
                    return False
                if outcome == REJECTED:
                    self.rejected.mkdir(exist_ok=True, mode=0o700)
                    with (self.rejected / path.name).open("ab") as out:
                        out.write(lines[0] + b"\n")
                lines.pop(0)
                if len(lines) % 50 == 0 and lines:  # bound re-sends after a crash
                    atomic_write(path, b"".join(line + b"\n" for line in lines))
            path.unlink()
        return True

    def _delivered(self) -> None:
        """Note a delivery (logs once that a failing receiver is reachable again)."""
        if self._failing_since is not None:
            log.info("Audit %s sink %r reachable again; delivering the spool", self.kind, self)
            self._failing_since = None

    def _warn(self, message: str, *args: object) -> None:
        """Warn when delivery starts failing, then at most once a minute (no log flood)."""
        now = time.monotonic()
        if self._failing_since is None or now - self._last_warning >= 60:
            log.warning(message, *args)
            self._last_warning = now
        if self._failing_since is None:
            self._failing_since = now


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (temp file, fsync, rename, fsync the directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
