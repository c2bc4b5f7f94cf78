"""Spool-and-forward machinery shared by the audit sinks (FHIR server, syslog).

A sink is a copy of the trail kept somewhere the hub's administrators do not
control alone. Delivery must survive the receiver being down for hours and the
hub restarting meanwhile, so every sink works the same way:

1. The log's writer hands each durable batch to :meth:`SpoolingSink.accept`,
   which encodes it (one message a line) into a *spool* file
   ``<spool>/<first>-<last seq>-<log id>.jsonl`` and fsyncs it before the log
   acknowledges the batch. Encoding happens here, on the writer thread, so a
   sink's cost is one small file write per batch, never a network wait.
2. A sender thread delivers spooled lines in order, rewriting the spool file
   as lines are delivered and deleting it when empty.
3. A line the receiver cannot take now is retried with exponential backoff
   (capped, jittered); a line it refuses for good moves to
   ``<spool>/rejected/`` with an ERROR log, so one bad message cannot block
   the rest.

Delivery is at-least-once: after a crash mid-file a line may be sent twice.
Each message carries the chain's log id and seq to de-duplicate.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``<first seq>-<last seq>-<log id>.jsonl``, as :meth:`SpoolingSink.accept` names a batch.
_SPOOL_NAME = re.compile(r"^\d{12}-\d{12}-[0-9a-f]+\.jsonl$")
#: What :meth:`SpoolingSink._send` answers for one line.
SENT, RETRY, REJECTED = "sent", "retry", "rejected"


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
    def accept(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Spool a durable batch (called by the log's writer thread, before it acknowledges)."""
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

    def pending(self) -> int:
        """Lines waiting in the spool.

        The sender thread deletes a spool file once it is delivered, possibly
        between listing the spool and reading the file: such a file counts as 0.
        """
        count = 0
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
            else:
                self._wake.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.max_backoff)
            self._wake.clear()
        self._idle()

    def _drain(self) -> bool:
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
