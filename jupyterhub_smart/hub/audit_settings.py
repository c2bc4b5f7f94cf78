"""The authenticator's settings for where the audit trail goes besides its file.

A mixin so :class:`~.authenticator.SMARTAuthenticator` keeps one job: these
traits (``c.SMARTAuthenticator.audit_syslog_url`` ...) turn into sink
configurations for :func:`jupyterhub_smart.audit.build_sinks`. See
``docs/audit.md`` for setting up ATNA with a SIEM.
"""

from __future__ import annotations

from typing import Any

from traitlets import HasTraits, Integer, TraitError, Unicode, validate


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
