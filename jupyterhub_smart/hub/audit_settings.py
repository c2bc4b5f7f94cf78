"""The authenticator's settings for where the audit trail goes besides its file.

A mixin so :class:`~.authenticator.SMARTAuthenticator` keeps one job: these
traits (``c.SMARTAuthenticator.audit_syslog_url`` ...) turn into sink
configurations for :func:`jupyterhub_smart.audit.build_sinks`. See
``docs/audit.md`` for setting up ATNA with a SIEM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlets import Bool, Float, HasTraits, Integer, TraitError, Unicode, default, validate

from ..audit.checkpoint import Checkpointer
from ..audit.log import AuditLog
from ..audit.retention import Retention
from ..smart.keys import load_private_key


class AuditSettings(HasTraits):
    """Audit destinations configured one setting at a time (syslog / IHE ATNA)."""

    audit_syslog_url = Unicode(
        "",
        config=True,
        help="""Send every audit record to a syslog receiver (an IHE ATNA Audit Record
        Repository or a SIEM) as an RFC 5424 message carrying the FHIR AuditEvent in JSON:
        tls://HOST:6514 (RFC 5425, TLS with octet-counting framing; use this), or
        tcp://HOST:PORT / udp://HOST:PORT for a lab only. Records are spooled to disk while
        the receiver is down and delivered in order. Empty: no syslog sink.""",
    )

    audit_syslog_ca_file = Unicode(
        "",
        config=True,
        help="""PEM file of the CA(s) that sign the syslog receiver's certificate (tls:// only).
        Empty: the system's trusted CAs. The receiver's host name must match its certificate
        (see audit_syslog_server_name).""",
    )

    audit_syslog_cert_file = Unicode(
        "",
        config=True,
        help="""PEM certificate (chain) the hub presents to the syslog receiver for mutual TLS
        (ATNA node authentication); set with audit_syslog_key_file.""",
    )

    audit_syslog_key_file = Unicode(
        "",
        config=True,
        help="""PEM private key of audit_syslog_cert_file. Keep it readable by the hub only.""",
    )

    audit_syslog_server_name = Unicode(
        "",
        config=True,
        help="""Name the syslog receiver's certificate must carry, when it differs from the host
        in audit_syslog_url (e.g. the url names an IP address).""",
    )

    audit_syslog_facility = Integer(
        10,
        min=0,
        max=23,
        config=True,
        help="""Syslog facility of audit messages: 10 (security/authorization), as IHE ATNA's
        Record Audit Event uses. Severity comes from each event (alerts highest).""",
    )

    audit_checkpoint_interval = Float(
        3600.0,
        min=0.0,
        config=True,
        help="""Seconds between signed checkpoints of the audit chain head (seq, hash, time) as a
        JWS, appended to audit_checkpoint_file and recorded in the trail (so every sink gets
        it). `jupyterhub-smart audit verify --checkpoints FILE --jwks URL` then catches a
        rewrite of the whole chain. 0: no periodic checkpoints.""",
    )

    audit_checkpoint_file = Unicode(
        "",
        config=True,
        help="""File the signed checkpoints are appended to (one JWS a line). Default: next to
        the log, `<audit_log_path>.checkpoints`. Keep a copy where the hub's administrators
        cannot rewrite it (the sinks receive every checkpoint too).""",
    )

    @default("audit_checkpoint_file")
    def _checkpoints_beside_the_log(self) -> str:
        log_path = getattr(self, "audit_log_path", "") or "jupyterhub-smart-audit.jsonl"
        return f"{Path(log_path).absolute()}.checkpoints"

    audit_checkpoint_key_path = Unicode(
        "",
        config=True,
        help="""PEM (or private JWK) file of the key that signs checkpoints (RS384 or ES384).
        Empty: the private_key_path of the first issuer that has one; with none, no
        checkpoints (and retention deletes nothing). Publish its public half (the hub's
        jwks.json does for issuer keys, published_jwks for others).""",
    )

    audit_compress_rotated = Bool(
        True,
        config=True,
        help="""gzip-compress rotated audit files (`<name>.<seq>.gz`); verify, export and the
        writer read them as they are.""",
    )

    audit_retention_days = Float(
        0.0,
        min=0.0,
        config=True,
        help="""Delete rotated audit files older than this many days (0: keep them all). The
        deletion is recorded (audit-retention) with a signed checkpoint that anchors the
        retained start; it needs a checkpoint key.""",
    )

    audit_retention_bytes = Integer(
        0,
        min=0,
        config=True,
        help="""Delete the oldest rotated audit files while all files together are larger than
        this many bytes (0: no limit). As audit_retention_days: recorded and anchored.""",
    )

    @validate("audit_syslog_url")
    def _check_syslog_url(self, proposal: Any) -> str:
        url = str(proposal["value"])
        if url and not url.startswith(("tls://", "tcp://", "udp://")):
            raise TraitError(
                "audit_syslog_url must be tls://HOST:PORT (or tcp:// / udp:// for a lab), "
                f"not {url.split(':', 1)[0]!r}"
            )
        return url

    def audit_syslog_sinks(self) -> list[dict[str, Any]]:
        """The syslog sink configuration these settings describe ([] when none)."""
        if not self.audit_syslog_url:
            return []
        config: dict[str, Any] = {
            "type": "syslog",
            "url": self.audit_syslog_url,
            "facility": self.audit_syslog_facility,
        }
        for key, value in (
            ("ca_file", self.audit_syslog_ca_file),
            ("cert_file", self.audit_syslog_cert_file),
            ("key_file", self.audit_syslog_key_file),
            ("server_name", self.audit_syslog_server_name),
        ):
            if value:
                config[key] = value
        return [config]

    def audit_keepers(self, path: Path, issuer_key_paths: list[str]) -> AuditKeepers:
        """The checkpointer and retention these settings describe, for the log at ``path``."""
        key_path = self.audit_checkpoint_key_path or next(iter(issuer_key_paths), "")
        checkpointer = None
        if key_path:
            checkpointer = Checkpointer(
                load_private_key(key_path),
                self.audit_checkpoint_interval,
                self.audit_checkpoint_file or f"{path}.checkpoints",
            )
        retention = None
        if self.audit_compress_rotated or self.audit_retention_days or self.audit_retention_bytes:
            retention = Retention(
                compress=self.audit_compress_rotated,
                max_age_days=self.audit_retention_days,
                max_bytes=self.audit_retention_bytes,
                checkpointer=checkpointer,
            )
        return AuditKeepers(checkpointer, retention)


class AuditKeepers:
    """What keeps the log trustworthy over time: signed checkpoints, compression, retention."""

    def __init__(self, checkpointer: Checkpointer | None, retention: Retention | None) -> None:
        self.checkpointer = checkpointer
        self.retention = retention

    @property
    def sinks(self) -> list[Any]:
        """Listed among the log's sinks so that the log closes them."""
        return [k for k in (self.checkpointer, self.retention) if k is not None]

    def open(self, path: Path, sinks: list[Any]) -> AuditLog:
        """Open the log with them attached."""
        on_rotate = self.retention.rotated if self.retention is not None else None
        audit_log = AuditLog(path, sinks=[*sinks, *self.sinks], on_rotate=on_rotate)
        if self.checkpointer is not None:
            self.checkpointer.attach(audit_log)
        if self.retention is not None:
            self.retention.attach(audit_log)
        return audit_log
