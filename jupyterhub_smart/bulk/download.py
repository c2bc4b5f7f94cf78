"""Downloading one manifest file: streamed, resumable, every line checked, Parquet while downloading.

The body is appended to the local file exactly as sent (gzip stays gzip) and
decoded on the fly. Complete lines are checked (JSON object, the file's
resource type, an id) and gathered into chunks; each chunk is committed in
this order: the local file fsynced, the chunk's Parquet part(s) written
atomically, then the state (byte offset of the body, lines, chunks) saved.
After a crash the state therefore never claims more than is on disk, and a
redone chunk rewrites the same part names: no row is lost or duplicated.

Resuming truncates the local file to the committed offset, re-reads that
prefix to rebuild the decoder and the partial last line, and asks for the rest
with ``Range``. A server that ignores ``Range`` (200 instead of 206), a
different encoding than before, or a prefix that no longer decodes restarts
that one file from byte 0, dropping its parts first.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson

from ..views.vector import Fallback
from .errors import BulkError, Interrupted
from .manifest import origin
from .output import TypeConverter, ViewWriter, remove_parts, write_part
from .retry import Backoff, retry_after
from .state import ExportState, FileState, StateFile

#: Attempts per file (429, 5xx, broken connections, truncated bodies).
MAX_ATTEMPTS = 8
#: Manifest re-fetches per file when its link has expired.
MAX_REFRESHES = 3
MAX_REDIRECTS = 5
_EXPECTED = {"deleted": "Bundle", "error": "OperationOutcome"}


class LinkExpired(Exception):
    """The file link is no longer valid (403/404/410): the manifest must be re-fetched."""


class _Retry(Exception):
    def __init__(self, wait: float | None, reason: str) -> None:
        super().__init__(reason)
        self.wait = wait
        self.reason = reason


class _Restart(Exception):
    """Start this file again from byte 0."""


@dataclass
class Progress:
    """Counters shared by the download threads (for tqdm and the summary)."""

    bytes: int = 0
    resources: int = 0
    files: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_change: Callable[[Progress], None] = lambda p: None

    def add(self, nbytes: int = 0, resources: int = 0, files: int = 0) -> None:
        with self.lock:
            self.bytes += nbytes
            self.resources += resources
            self.files += files
        self.on_change(self)


@dataclass
class Downloader:
    """Downloads manifest files into the output directory (one call per file, thread-safe)."""

    http: httpx.Client
    auth: httpx.Auth | None
    out: Path
    state: ExportState
    state_file: StateFile
    refresh_manifest: Callable[[], None]
    progress: Progress
    stop: threading.Event
    view_definitions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chunk_lines: int = 5_000
    sleep: Callable[[float], Any] = time.sleep

    def local_path(self, f: FileState, gz: bool) -> Path:
        ordinal = int(f.key.rsplit(":", 1)[1])
        suffix = ".ndjson.gz" if gz else ".ndjson"
        folder = {"output": f"ndjson/{f.type}", "deleted": "deleted/ndjson", "error": "errors"}[
            f.kind
        ]
        return self.out / folder / f"{self.state.run}-{f.type}-{ordinal:04d}{suffix}"

    def part_prefix(self, f: FileState) -> str:
        return f"part-{self.state.run}-{int(f.key.rsplit(':', 1)[1]):04d}-"

    def download(self, f: FileState) -> None:
        """Download ``f`` to completion (or raise BulkError / Interrupted)."""
        backoff = Backoff(base=0.5, cap=30)
        attempts = refreshes = 0
        while not f.done:
            if self.stop.is_set():
                raise Interrupted("stopped")
            try:
                self._attempt(f)
            except _Restart:
                self._reset(f)
            except LinkExpired as exc:
                refreshes += 1
                if refreshes > MAX_REFRESHES:
                    raise BulkError(
                        f"{f.key}: the file link keeps failing ({exc}) after re-fetching the manifest"
                    ) from None
                self.refresh_manifest()
            except _Retry as exc:
                attempts += 1
                if attempts >= MAX_ATTEMPTS:
                    raise BulkError(
                        f"{f.key}: gave up after {attempts} attempts ({exc.reason})"
                    ) from None
                self.sleep(exc.wait if exc.wait is not None else backoff.next())

    def _reset(self, f: FileState) -> None:
        for gz in (True, False):
            self.local_path(f, gz).unlink(missing_ok=True)
        remove_parts(self.out / "parquet" / f.type, self.part_prefix(f))
        for name, _ in self.view_definitions:
            remove_parts(self.out / "views" / name, self.part_prefix(f))
        f.raw_bytes = f.lines = f.chunks = f.invalid = 0
        f.gzip = None
        self.state_file.save(self.state)

    def _attempt(self, f: FileState) -> None:
        headers = {"Accept": "application/fhir+ndjson", "Accept-Encoding": "gzip"}
        if f.raw_bytes:
            headers["Range"] = f"bytes={f.raw_bytes}-"
        url = f.url
        auth = self.auth if self.state.requires_access_token else None
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with self.http.stream(
                    "GET", url, headers=headers, auth=auth, follow_redirects=False
                ) as response:
                    if response.status_code in (301, 302, 303, 307, 308):
                        target = urljoin(url, response.headers.get("location", ""))
                        if origin(target) != origin(url):
                            auth = None  # never carry the bearer token to another origin
                        url = target
                        continue
                    self._receive(f, response)
                    return
            except (httpx.TransportError, zlib.error) as exc:
                raise _Retry(None, type(exc).__name__) from None
        raise BulkError(f"{f.key}: more than {MAX_REDIRECTS} redirects")

    def _receive(self, f: FileState, response: httpx.Response) -> None:
        status = response.status_code
        if status in (403, 404, 410):
            raise LinkExpired(f"HTTP {status}")
        if status == 416 and f.raw_bytes:
            raise _Restart()
        if status == 429 or status >= 500:
            raise _Retry(retry_after(response.headers.get("retry-after")), f"HTTP {status}")
        if status not in (200, 206):
            raise BulkError(f"{f.key}: the file download answered HTTP {status}")
        if f.raw_bytes and status == 200:
            raise _Restart()  # the server ignored Range: start this file again
        if status == 206 and not response.headers.get("content-range", "").startswith(
            f"bytes {f.raw_bytes}-"
        ):
            raise _Restart()
        gz = "gzip" in response.headers.get("content-encoding", "").lower()
        if f.gzip is not None and gz != f.gzip:
            raise _Restart()
        f.gzip = gz
        path = self.local_path(f, gz)
        f.name = str(path.relative_to(self.out))
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = _Chunk(self, f)
        with path.open("r+b" if path.exists() else "w+b") as handle:
            handle.truncate(f.raw_bytes)
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None
            buffer = self._replay(f, handle, decoder)
            handle.seek(f.raw_bytes)
            written = f.raw_bytes
            for data in response.iter_raw(1 << 16):
                if self.stop.is_set():
                    raise Interrupted("stopped")
                handle.write(data)
                written += len(data)
                self.progress.add(nbytes=len(data))
                buffer += decoder.decompress(data) if decoder else data
                if b"\n" in buffer:
                    *complete, buffer = buffer.split(b"\n")
                    chunk.lines(complete)
                if chunk.size >= self.chunk_lines:
                    chunk.commit(handle, written)
            if decoder is not None:
                buffer += decoder.flush()
                if not decoder.eof:
                    raise _Retry(None, "the gzip stream ended early")
            chunk.lines([buffer] if buffer.strip() else [])
            chunk.commit(handle, written, final=True)
        if f.kind == "output" and f.count is not None and f.lines != f.count:
            f.problem = f"{f.lines} lines, but the manifest's count is {f.count}"
        self.state_file.save(self.state)

    def _replay(self, f: FileState, handle: Any, decoder: Any) -> bytes:
        """Decode the committed prefix again; returns its partial last line."""
        if not f.raw_bytes:
            return b""
        handle.seek(0)
        buffer = b""
        counted = 0
        remaining = f.raw_bytes
        while remaining:
            data = handle.read(min(1 << 20, remaining))
            if not data:
                raise _Restart()  # the local file is shorter than the state says
            remaining -= len(data)
            try:
                buffer += decoder.decompress(data) if decoder else data
            except zlib.error:
                raise _Restart() from None
            if b"\n" in buffer:
                *complete, buffer = buffer.split(b"\n")
                counted += sum(1 for line in complete if line.strip())
        if counted != f.lines:
            raise _Restart()
        return buffer


class _Chunk:
    """The lines since the last commit of one file."""

    def __init__(self, downloader: Downloader, f: FileState) -> None:
        self.d = downloader
        self.f = f
        self.expected = f.type if f.kind == "output" else _EXPECTED[f.kind]
        self.resources: list[tuple[dict[str, Any], bytes]] = []
        #: lines of an output file, checked at commit (by the Arrow engine when it can)
        self.raw: list[bytes] = []
        self.invalid: list[bytes] = []
        self.size = 0
        self.converter = TypeConverter(f.type) if f.kind == "output" else None
        self.views = [
            ViewWriter(name, definition)
            for name, definition in downloader.view_definitions
            if f.kind == "output" and definition.get("resource") == f.type
        ]

    def lines(self, lines: list[bytes]) -> None:
        if self.converter is not None:
            self.raw.extend(filter(bytes.strip, lines))  # the non-blank ones, no bytecode per line
            self.size = len(self.raw)
            return
        self.check(lines)

    def check(self, lines: list[bytes]) -> None:
        """Parse and check each line: resources to :attr:`resources`, the rest to :attr:`invalid`."""
        for line in lines:
            if not line.strip():
                continue
            self.size += 1
            number = self.f.lines + self.size
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                self._bad(number, "not JSON", line)
                continue
            if not isinstance(resource, dict) or resource.get("resourceType") != self.expected:
                self._bad(number, f"not a {self.expected} resource", line)
                continue
            if self.f.kind == "output" and not isinstance(resource.get("id"), str):
                self._bad(number, "a resource without id", line)
                continue
            self.resources.append((resource, line))

    def _bad(self, number: int, reason: str, line: bytes) -> None:
        self.invalid.append(
            orjson.dumps(
                {
                    "file": self.f.key,
                    "line": number,
                    "reason": reason,
                    "content": line[:2000].decode("utf-8", "replace"),
                }
            )
        )

    def commit(self, handle: Any, written: int, *, final: bool = False) -> None:
        f = self.f
        handle.flush()
        os.fsync(handle.fileno())
        prefix = self.d.part_prefix(f)
        name = f"{prefix}{f.chunks:05d}.parquet"
        resources = self.convert(name) if self.converter is not None and self.raw else 0
        if self.invalid:
            path = (
                self.d.out
                / "errors"
                / "invalid"
                / f"{self.d.state.run}-{f.key.replace(':', '-')}-{f.chunks:05d}.ndjson"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(b"\n".join(self.invalid) + b"\n")
            os.replace(tmp, path)
        f.raw_bytes = written
        f.lines += self.size
        f.invalid += len(self.invalid)
        f.chunks += 1
        if final:
            f.done = True
        self.d.state_file.save(self.d.state)
        self.d.progress.add(resources=resources, files=1 if final else 0)
        self.resources, self.invalid, self.raw, self.size = [], [], [], 0

    def convert(self, name: str) -> int:
        """Write the Parquet parts of the chunk's lines; returns how many resources they hold.

        All lines valid: the Arrow engine converts them in one go. Otherwise (or
        where it does not read them exactly) each line is checked and the valid
        ones go through the closure engine.
        """
        assert self.converter is not None
        f = self.f
        try:
            batch = self.converter.lines_batch(self.raw)
        except Fallback:
            raw, self.raw, self.size = self.raw, [], 0
            self.check(raw)
            self.raw = raw
            if self.resources:
                write_part(
                    self.d.out / "parquet" / f.type / name, self.converter.batch(self.resources)
                )
            plain = [r for r, _ in self.resources]
            for view in self.views:
                batch = view.batch(plain)
                if batch is not None:
                    write_part(self.d.out / "views" / view.name / name, batch)
            return len(self.resources)
        write_part(self.d.out / "parquet" / f.type / name, batch)
        for view in self.views:
            try:
                view_batch = view.lines_batch(self.raw)
            except Fallback:
                view_batch = view.batch([orjson.loads(line) for line in self.raw])
            if view_batch is not None:
                write_part(self.d.out / "views" / view.name / name, view_batch)
        return len(self.raw)
