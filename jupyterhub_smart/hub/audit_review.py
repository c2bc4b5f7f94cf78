"""Options for reviewing the audit trail in the hub: the admin page's index and the alert rules.

A mixin of :class:`~.authenticator.SMARTAuthenticator` (set as
``c.SMARTAuthenticator.<option>``), kept apart so the authenticator module
only wires it in: :meth:`AuditReviewSettings.alert_sink` gives the sink that
``_open_audit_log`` attaches to the hub's AuditLog, and
:data:`~.audit_page.audit_page_handlers` serves ``/hub/smart/audit``.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Integer, Unicode, validate
from traitlets.config import Configurable

from ..audit.alerts import AlertRules, AlertSink, Webhook

__all__ = ["AuditReviewSettings"]


class AuditReviewSettings(Configurable):
    """The audit page's index and the alert rules (see docs/audit.md)."""

    audit_index_path = Unicode(
        "",
        config=True,
        help="""Index of the audit log that /hub/smart/audit and `jupyterhub-smart audit query`
        use (SQLite, rebuilt from the log whenever deleted). Empty: `<audit_log_path>.index.sqlite`
        beside the log. It names patients like the log: keep it on the same protected disk.""",
    )

    audit_alert_patient_limit = Integer(
        50,
        min=0,
        config=True,
        help="""Alert `alert-patient-spread` when one user touches more than this many distinct
        patients (data access, sign-ins and tokens in a patient's context) within
        audit_alert_patient_window seconds. 0: off.""",
    )

    audit_alert_patient_window = Float(
        3600.0,
        min=1.0,
        config=True,
        help="Seconds over which audit_alert_patient_limit counts distinct patients.",
    )

    audit_alert_out_of_context = Bool(
        True,
        config=True,
        help="""Alert `alert-out-of-context` when a user whose sign-in granted user-level scopes
        (user/...) reads data of a patient other than the one their EHR launch chose.""",
    )

    audit_alert_refused_limit = Integer(
        5,
        min=0,
        config=True,
        help="""Alert `alert-refused-tokens` at this many refused tokens for one user (the FHIR
        server answered 401, a refresh failed, the user had to sign in again) within
        audit_alert_refused_window seconds. 0: off.""",
    )

    audit_alert_refused_window = Float(
        600.0,
        min=1.0,
        config=True,
        help="Seconds over which audit_alert_refused_limit counts refused tokens.",
    )

    audit_alert_new_address = Bool(
        True,
        config=True,
        help="""Alert `alert-new-address` when a user signs in from a network address not seen
        for them before (the rules' memory outlives restarts, in <audit_log_path>.alerts.json;
        the first sign-in of each user is the baseline).""",
    )

    audit_alert_webhook = Unicode(
        "",
        config=True,
        help="""URL that each alert is also POSTed to as JSON (kind, time, seq, user, patient
        reference, address, description; never a token), from a background thread with
        retries, so a slow receiver never delays the trail. Empty: no webhook. Use https
        outside a lab.""",
    )

    @validate("audit_alert_webhook")
    def _validate_webhook(self, proposal: Any) -> str:
        url = str(proposal["value"]).strip()
        if url and not url.startswith(("https://", "http://")):
            raise ValueError("SMARTAuthenticator.audit_alert_webhook must be an http(s) URL")
        return url

    def alert_rules(self) -> AlertRules:
        return AlertRules(
            patient_limit=self.audit_alert_patient_limit,
            patient_window=self.audit_alert_patient_window,
            out_of_context=self.audit_alert_out_of_context,
            refused_limit=self.audit_alert_refused_limit,
            refused_window=self.audit_alert_refused_window,
            new_address=self.audit_alert_new_address,
        )

    def alert_sink(self) -> AlertSink:
        """A new sink running the configured rules (attach it to the log it belongs to)."""
        webhook = Webhook(self.audit_alert_webhook) if self.audit_alert_webhook else None
        return AlertSink(self.alert_rules(), webhook)
