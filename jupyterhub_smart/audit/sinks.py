"""Forward audit records to a FHIR server as AuditEvent resources, without losing any.

The local log stays the source of truth; a sink is a copy kept somewhere the
hub's administrators do not control alone (a hospital's audit repository, an
EHR's FHIR server). Delivery must survive that server being down for hours and
the hub restarting meanwhile, so:

1. The log's writer hands each durable batch to :meth:`FHIRSink.accept`, which
   writes it to a *spool* file (``<spool>/<first>-<last seq>-<log id>.jsonl``, one
   AuditEvent per line) and fsyncs it before the log acknowledges the batch
   (:mod:`.spool`, shared with the syslog sink).
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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from .export import to_audit_event
from .spool import REJECTED, RETRY, SENT, SpoolingSink

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
SYSLOG_KEYS = frozenset(
    {"type", "url", "spool_dir", "ca_file", "cert_file", "key_file", "server_name"}
    | {"facility", "msgid", "timeout", "max_backoff"}
)


class FHIRSink(SpoolingSink):
    """Spool every audit record and POST it to a FHIR server as an AuditEvent."""

    kind = "fhir"

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
        super().__init__(spool_dir, initial_backoff=initial_backoff, max_backoff=max_backoff)
        self.url = url.rstrip("/")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._token: str | None = None
        self._token_expires = 0.0
        self._start()

    def __repr__(self) -> str:  # never shows the secret
        return f"FHIRSink({self.url!r}, spool={str(self.spool)!r})"

    def _encode(self, record: Mapping[str, Any]) -> bytes:
        return orjson.dumps(to_audit_event(record))

    def _closed(self) -> None:
        self._http.close()

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
            return RETRY
        if response.status_code in (200, 201):
            self._delivered()
            return SENT
        if response.status_code in RETRYABLE:
            if response.status_code == 401:
                self._token = None
            self._warn(
                "Audit FHIR sink %s answered %d; AuditEvent %s stays spooled",
                self.url,
                response.status_code,
                seq,
            )
            return RETRY
        log.error(
            "Audit FHIR sink %s refused AuditEvent %s with %d; kept in %s",
            self.url,
            seq,
            response.status_code,
            self.rejected,
        )
        return REJECTED

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


def build_sinks(
    configs: Sequence[Mapping[str, Any]], default_spool_dir: Path
) -> list[SpoolingSink]:
    """Sinks from the authenticator's ``audit_sinks`` setting; ``ValueError`` names what is wrong.

    Each entry: ``{"type": "fhir", "url": FHIR_BASE, "token_url": ..., "client_id": ...,
    "client_secret" or "client_secret_file": ..., "scope": "system/AuditEvent.c",
    "spool_dir": DIR (default: next to the log)}``, or ``{"type": "syslog", "url":
    "tls://HOST:6514", "ca_file": ..., "cert_file": ..., "key_file": ..., "server_name": ...,
    "facility": 10, "msgid": "IHE+FHIR", "spool_dir": ...}`` (:mod:`.syslog`).
    """
    from .syslog import SyslogSink

    sinks: list[SpoolingSink] = []
    for index, config in enumerate(configs):
        if not isinstance(config, Mapping):
            raise ValueError(f"audit_sinks[{index}] must be a dict")
        kind = config.get("type")
        allowed = SYSLOG_KEYS if kind == "syslog" else SINK_KEYS
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"audit_sinks[{index}]: unknown key(s) {', '.join(unknown)}")
        if kind not in ("fhir", "syslog"):
            raise ValueError(f"audit_sinks[{index}]: type must be 'fhir' or 'syslog'")
        if not isinstance(config.get("url"), str):
            raise ValueError(f"audit_sinks[{index}]: url (the FHIR base URL) is required")
        spool = Path(config.get("spool_dir") or default_spool_dir / f"sink-{index}")
        if kind == "syslog":
            sinks.append(
                SyslogSink(
                    config["url"],
                    spool,
                    ca_file=config.get("ca_file"),
                    cert_file=config.get("cert_file"),
                    key_file=config.get("key_file"),
                    server_name=config.get("server_name"),
                    facility=int(config.get("facility", 10)),
                    msgid=str(config.get("msgid", "IHE+FHIR")),
                    timeout=float(config.get("timeout", 10.0)),
                    max_backoff=float(config.get("max_backoff", 300.0)),
                )
            )
            continue
        secret = config.get("client_secret")
        secret_file = config.get("client_secret_file")
        if secret_file:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
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
