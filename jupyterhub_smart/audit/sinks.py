"""Forward audit records to a FHIR server as AuditEvent resources, without losing any.

The local log stays the source of truth; a sink is a copy kept somewhere the
hub's administrators do not control alone (a hospital's audit repository, an
EHR's FHIR server). Delivery must survive that server being down for hours and
the hub restarting meanwhile, so:

1. The log's writer hands each durable batch to :meth:`FHIRSink.accept`, which
   writes it to a *spool* file (``<spool>/<first>-<last seq>-<log id>.jsonl``, one
   AuditEvent per line) and fsyncs it before the log acknowledges the batch.
2. A sender thread POSTs spooled resources in order to ``{url}/AuditEvent``,
   rewriting the spool file as lines are delivered and deleting it when empty.
3. Connection errors, timeouts, 401 (token expired: fetched again), 408, 429
   and 5xx are retried with exponential backoff (capped, jittered); anything
   else the server refuses (400, 403, 422...) moves to ``<spool>/rejected/``
   with an ERROR log, so one bad resource cannot block the rest.

Delivery is at-least-once: after a crash mid-file a resource may be sent twice.
Each resource carries the chain extension (log id, seq, hash) to de-duplicate.

The sink authenticates with OAuth 2.0 client credentials (SMART Backend
Services style scopes, e.g. ``system/AuditEvent.c``) using a client secret; the
token is kept in memory only and never logged.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from .export import to_audit_event

log = logging.getLogger(__name__)

RETRYABLE = frozenset({401, 408, 425, 429, 500, 502, 503, 504})
SINK_KEYS = frozenset(
    {
        "type",
        "url",
        "spool_dir",
        "token_url",
        "client_id",
        "client_secret",
        "client_secret_file",
        "scope",
        "timeout",
        "max_backoff",
    }
)


class FHIRSink:
    """Spool every audit record and POST it to a FHIR server as an AuditEvent."""

    def __init__(
        self,
        url: str,
        spool_dir: str | os.PathLike[str],
        *,
        token_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str = "system/AuditEvent.c",
        timeout: float = 10.0,
        initial_backoff: float = 1.0,
        max_backoff: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("FHIR sink url must be an http(s) URL of a FHIR base")
        if token_url and not (client_id and client_secret):
            raise ValueError("FHIR sink: token_url needs client_id and client_secret")
        self.url = url.rstrip("/")
        self.spool = Path(spool_dir)
        self.rejected = self.spool / "rejected"
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._token: str | None = None
        self._token_expires = 0.0
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-fhir-sink", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # never shows the secret
        return f"FHIRSink({self.url!r}, spool={str(self.spool)!r})"

    # ------------------------------------------------------------ from the log
    def accept(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Spool a durable batch (called by the log's writer thread, before it acknowledges)."""
        if not records:
            return
        # The log id keeps a new log (same seq numbers) from overwriting an old spool.
        name = f"{records[0]['seq']:012d}-{records[-1]['seq']:012d}-{records[0]['log_id']}.jsonl"
        data = b"".join(orjson.dumps(to_audit_event(r)) + b"\n" for r in records)
        _atomic_write(self.spool / name, data)
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop sending; what is not delivered stays spooled for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._http.close()

    def pending(self) -> int:
        """Resources waiting in the spool.

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
        return sorted(p for p in self.spool.glob("*.jsonl") if not p.name.startswith("."))

    def _run(self) -> None:
        backoff = self.initial_backoff
        while not self._stop.is_set():
            try:
                delivered_all = self._drain()
            except Exception:
                log.exception("Audit FHIR sink %s: unexpected error; will retry", self.url)
                delivered_all = False
            if delivered_all:
                backoff = self.initial_backoff
                self._wake.wait()
            else:
                self._wake.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.max_backoff)
            self._wake.clear()

    def _drain(self) -> bool:
        """Send spooled resources in order; False if the server is unreachable now."""
        for path in self._spooled():
            lines = path.read_bytes().splitlines()
            while lines:
                outcome = "retry" if self._stop.is_set() else self._send(lines[0])
                if outcome == "retry":
                    _atomic_write(path, b"".join(line + b"\n" for line in lines))
                    return False
                if outcome == "rejected":
                    self.rejected.mkdir(exist_ok=True, mode=0o700)
                    with (self.rejected / path.name).open("ab") as out:
                        out.write(lines[0] + b"\n")
                lines.pop(0)
                if len(lines) % 50 == 0 and lines:  # bound re-sends after a crash
                    _atomic_write(path, b"".join(line + b"\n" for line in lines))
            path.unlink()
        return True

    def _send(self, line: bytes) -> str:
        """POST one resource: ``"sent"``, ``"retry"`` or ``"rejected"``."""
        seq = orjson.loads(line).get("id", "?")
        try:
            headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
            token = self._bearer()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = self._http.post(f"{self.url}/AuditEvent", content=line, headers=headers)
        except (httpx.HTTPError, _TokenError) as exc:
            self._warn(
                "Audit FHIR sink %s unreachable (%s); AuditEvent %s stays spooled",
                self.url,
                type(exc).__name__,
                seq,
            )
            return "retry"
        if response.status_code in (200, 201):
            if self._failing_since is not None:
                log.info("Audit FHIR sink %s reachable again; delivering the spool", self.url)
                self._failing_since = None
            return "sent"
        if response.status_code in RETRYABLE:
            if response.status_code == 401:
                self._token = None
            self._warn(
                "Audit FHIR sink %s answered %d; AuditEvent %s stays spooled",
                self.url,
                response.status_code,
                seq,
            )
            return "retry"
        log.error(
            "Audit FHIR sink %s refused AuditEvent %s with %d; kept in %s",
            self.url,
            seq,
            response.status_code,
            self.rejected,
        )
        return "rejected"

    def _warn(self, message: str, *args: object) -> None:
        """Warn when delivery starts failing, then at most once a minute (no log flood)."""
        now = time.monotonic()
        if self._failing_since is None or now - self._last_warning >= 60:
            log.warning(message, *args)
            self._last_warning = now
        if self._failing_since is None:
            self._failing_since = now

    def _bearer(self) -> str | None:
        if not self.token_url:
            return None
        if self._token and time.monotonic() < self._token_expires:
            return self._token
        assert self.client_id and self._client_secret
        response = self._http.post(
            self.token_url,
            data={"grant_type": "client_credentials", "scope": self.scope},
            auth=(self.client_id, self._client_secret),
        )
        if response.status_code != 200:
            raise _TokenError(f"token endpoint answered {response.status_code}")
        body = response.json()
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise _TokenError("token endpoint returned no access_token")
        expires_in = body.get("expires_in", 300)
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) else 300.0
        self._token = token
        self._token_expires = time.monotonic() + max(0.0, lifetime - 30)
        return token


class _TokenError(Exception):
    """Could not get a token for the sink (message never holds the secret)."""


def _atomic_write(path: Path, data: bytes) -> None:
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


def build_sinks(configs: Sequence[Mapping[str, Any]], default_spool_dir: Path) -> list[FHIRSink]:
    """Sinks from the authenticator's ``audit_sinks`` setting; ``ValueError`` names what is wrong.

    Each entry: ``{"type": "fhir", "url": FHIR_BASE, "token_url": ..., "client_id": ...,
    "client_secret" or "client_secret_file": ..., "scope": "system/AuditEvent.c",
    "spool_dir": DIR (default: next to the log)}``.
    """
    sinks = []
    for index, config in enumerate(configs):
        if not isinstance(config, Mapping):
            raise ValueError(f"audit_sinks[{index}] must be a dict")
        unknown = sorted(set(config) - SINK_KEYS)
        if unknown:
            raise ValueError(f"audit_sinks[{index}]: unknown key(s) {', '.join(unknown)}")
        if config.get("type") != "fhir":
            raise ValueError(f"audit_sinks[{index}]: type must be 'fhir'")
        if not isinstance(config.get("url"), str):
            raise ValueError(f"audit_sinks[{index}]: url (the FHIR base URL) is required")
        secret = config.get("client_secret")
        secret_file = config.get("client_secret_file")
        if secret_file:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        spool = Path(config.get("spool_dir") or default_spool_dir / f"sink-{index}")
        sinks.append(
            FHIRSink(
                config["url"],
                spool,
                token_url=config.get("token_url"),
                client_id=config.get("client_id"),
                client_secret=secret,
                scope=config.get("scope", "system/AuditEvent.c"),
                timeout=float(config.get("timeout", 10.0)),
                max_backoff=float(config.get("max_backoff", 300.0)),
            )
        )
    return sinks
