"""IHE ATNA syslog sink: each audit record to a SIEM as an RFC 5424 message.

IHE ATNA's Record Audit Event [ITI-20] sends audit records over syslog. The
payload here is the record's FHIR R4 AuditEvent in JSON, shaped after IHE BALP
(:func:`.export.to_audit_event`), which ITI-20 allows beside the older DICOM
audit XML: it is the same resource the FHIR sink posts and ``audit export``
writes, so one parser serves every copy. The message is::

    <PRI>1 TIMESTAMP HOSTNAME jupyterhub-smart PROCID IHE+FHIR - BOM{"resourceType":"AuditEvent",...}

* PRI: facility 10 (security/authorization, as ITI-20 uses) and a severity from
  the event: an alert (action ``alert...``) is 1 (Alert); a serious failure
  (outcome 8 or 12) 3 (Error); a failure or a DICOM Security Alert 4 (Warning);
  anything else 5 (Notice).
* TIMESTAMP: when the event was submitted to the log (the record's ``time``).
* MSGID ``IHE+FHIR`` (our choice, after ITI-20's ``IHE+RFC-3881`` for DICOM XML;
  configurable) tells a receiver the payload is a FHIR AuditEvent in JSON.
* STRUCTURED-DATA is empty (``-``): the chain's log id, seq and hash travel in
  the AuditEvent's chain extension.

Transports: ``tls`` (RFC 5425: TCP with TLS, octet-counting framing, the server
certificate verified against a CA file, and a client certificate for mutual
TLS), ``tcp`` (RFC 6587 octet counting, for a lab) and ``udp`` (RFC 5426, one
datagram a message, for a lab: no delivery guarantee at all).

Guarantees (TLS and TCP) are the FHIR sink's (:mod:`.spool`): spooled to disk
before the log acknowledges, sent in order by a thread, retried with backoff
while the receiver is down, nothing dropped. Syslog has no acknowledgement, so
before each write the sink checks that the receiver has not closed the
connection (a closed one is reopened and the line re-sent); what a receiver
reads and then loses is beyond any syslog sender. A receiver may check the
client certificate only after the TLS handshake (rsyslog's gtls driver does,
and TLS 1.3 reports a refused client certificate after the client's side of the
handshake anyway) and then close the connection: so on each new TLS connection
the sink waits up to ``settle`` seconds for such a close before writing, and a
refused certificate never swallows a message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .export import to_audit_event
from .spool import REJECTED, RETRY, SENT, SpoolingSink

log = logging.getLogger(__name__)

TRANSPORTS = ("tls", "tcp", "udp")
DEFAULT_PORTS = {"tls": 6514, "tcp": 601, "udp": 514}
#: ITI-20's facility: security/authorization messages.
FACILITY_AUTH = 10
DEFAULT_MSGID = "IHE+FHIR"
APP_NAME = "jupyterhub-smart"
_BOM = b"\xef\xbb\xbf"
#: Largest message a UDP datagram carries (IPv4, without fragmentation limits).
MAX_UDP = 65_000

SECURITY_ALERT = ("http://dicom.nema.org/resources/ontology/DCM", "110113")


def severity(resource: Mapping[str, Any]) -> int:
    """RFC 5424 severity for an AuditEvent: alerts highest, then failures, then the rest."""
    for coding in resource.get("subtype") or ():
        code = coding.get("code") if isinstance(coding, Mapping) else None
        if isinstance(code, str) and code.startswith("alert"):
            return 1
    outcome = resource.get("outcome")
    if outcome in ("8", "12"):
        return 3
    kind = resource.get("type") or {}
    if outcome == "4" or (kind.get("system"), kind.get("code")) == SECURITY_ALERT:
        return 4
    return 5


def format_message(
    resource: Mapping[str, Any],
    timestamp: str,
    *,
    hostname: str,
    facility: int = FACILITY_AUTH,
    msgid: str = DEFAULT_MSGID,
    procid: str | None = None,
) -> bytes:
    """One RFC 5424 message carrying ``resource`` as JSON (no framing, no newline)."""
    pri = facility * 8 + severity(resource)
    header = f"<{pri}>1 {timestamp} {_field(hostname, 255)} {APP_NAME} "
    header += f"{_field(procid or str(os.getpid()), 128)} {_field(msgid, 32)} - "
    return header.encode("ascii") + _BOM + orjson.dumps(resource)


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, clipped, ``-`` when empty."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


class SyslogSink(SpoolingSink):
    """Spool every audit record and send it to a syslog receiver (ATNA Audit Record Repository)."""

    kind = "syslog"

    def __init__(
        self,
        url: str,
        spool_dir: str | os.PathLike[str],
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
        facility: int = FACILITY_AUTH,
        msgid: str = DEFAULT_MSGID,
        timeout: float = 10.0,
        settle: float = 1.0,
        initial_backoff: float = 1.0,
        max_backoff: float = 300.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in TRANSPORTS or not parts.hostname:
            raise ValueError(
                f"syslog sink url must be tls://HOST:PORT, tcp://HOST:PORT or udp://HOST:PORT "
                f"(got scheme {parts.scheme or 'none'!r})"
            )
        if not 0 <= facility <= 23:
            raise ValueError("syslog facility must be 0..23")
        if bool(cert_file) != bool(key_file):
            raise ValueError("syslog sink: a client certificate needs both cert_file and key_file")
        if parts.scheme != "tls" and (ca_file or cert_file):
            raise ValueError("syslog sink: ca_file/cert_file/key_file need a tls:// url")
        for name, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
            if path and not Path(path).is_file():
                raise ValueError(f"syslog sink: {name} {path} is not a readable file")
        super().__init__(spool_dir, initial_backoff=initial_backoff, max_backoff=max_backoff)
        self.transport = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.facility = facility
        self.msgid = msgid
        self.timeout = timeout
        self.settle = settle
        self.hostname = socket.gethostname()
        self._server_name = server_name or self.host
        self._tls: ssl.SSLContext | None = None
        if self.transport == "tls":
            self._tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file and key_file:
                self._tls.load_cert_chain(cert_file, key_file)
        self._sock: socket.socket | None = None
        self._start()

    def __repr__(self) -> str:
        return (
            f"SyslogSink('{self.transport}://{self.host}:{self.port}', spool={str(self.spool)!r})"
        )

    # ------------------------------------------------------------ spool side
    def _encode(self, record: Mapping[str, Any]) -> bytes:
        return format_message(
            to_audit_event(record),
            str(record["time"]),
            hostname=self.hostname,
            facility=self.facility,
            msgid=self.msgid,
        )

    # ------------------------------------------------------------ sender side
    def _send(self, line: bytes) -> str:
        if self.transport == "udp" and len(line) > MAX_UDP:
            log.error(
                "Audit syslog sink %r: a %d-byte message does not fit a UDP datagram; kept in %s",
                self,
                len(line),
                self.rejected,
            )
            return REJECTED
        try:
            sock = self._connection()
            if self.transport == "udp":
                sock.send(line)
            else:
                sock.sendall(f"{len(line)} ".encode("ascii") + line)
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            self._warn(
                "Audit syslog sink %r: the receiver's certificate was refused (%s); "
                "records stay spooled",
                self,
                exc.verify_message or "verification failed",
            )
            return RETRY
        except (OSError, ssl.SSLError) as exc:
            self._drop()
            self._warn(
                "Audit syslog sink %r unreachable (%s); records stay spooled",
                self,
                type(exc).__name__,
            )
            return RETRY
        self._delivered()
        return SENT

    def _connection(self) -> socket.socket:
        """The open connection, reopened if the receiver closed it since the last write."""
        if self._sock is not None and self.transport != "udp" and _peer_closed(self._sock):
            self._drop()
        if self._sock is None:
            kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
            family, _, _, _, address = socket.getaddrinfo(self.host, self.port, type=kind)[0]
            sock = socket.socket(family, kind)
            sock.settimeout(self.timeout)
            try:
                sock.connect(address)
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)
                    if _peer_closed(sock, self.settle):  # hung up at once: it refused us
                        raise ConnectionRefusedError("the receiver closed the new TLS connection")
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _closed(self) -> None:
        self._drop()


def _peer_closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the receiver closed (or reset) the connection, waiting up to ``wait`` seconds.

    A syslog receiver never sends data; what it may send is a close, a TLS alert
    or TLS 1.3 session tickets (consumed here, they mean nothing).
    """
    deadline = time.monotonic() + wait
    timeout = sock.gettimeout()
    while True:
        try:
            readable, _, errored = select.select(
                [sock], [], [sock], max(0.0, deadline - time.monotonic())
            )
        except (OSError, ValueError):
            return True
        if errored:
            return True
        if not readable:
            return False
        sock.setblocking(False)
        try:
            data = sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue  # a TLS record with no data in it (a session ticket): still open
        except (OSError, ssl.SSLError):
            return True
        finally:
            sock.settimeout(timeout)
        if not data:
            return True
