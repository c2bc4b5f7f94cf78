"""Tunables of the sandbox authorization server that are not on the FHIR side.

They live apart from :class:`~jupyterhub_smart.sandbox.settings.SandboxSettings`
because only the authorization server reads them, and tests shorten them to
exercise expiry without waiting minutes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuthOptions:
    """Lifetimes and limits of codes, launches and client assertions."""

    #: Authorization codes are single-use and short-lived (RFC 6749 recommends <= 10 min).
    code_lifetime: int = 60
    #: A ``launch`` handle from the EHR simulator works once, within this many seconds.
    launch_lifetime: int = 600
    #: ``exp`` of a private_key_jwt assertion may be at most this far ahead (SMART: 5 min).
    max_assertion_lifetime: int = 300
    #: Seconds to wait for a client's ``jwks_uri``.
    jwks_fetch_timeout: float = 3.0
    #: Seconds a fetched ``jwks_uri`` document is reused before fetching again.
    jwks_cache_seconds: float = 60.0
    #: An assertion whose ``kid`` is not in the cached document refetches it, at most this often.
    jwks_refetch_interval: float = 2.0
    #: Backend Services tokens SHOULD live at most 5 minutes (SMART Backend Services).
    max_system_token_lifetime: int = 300
    #: Interactive authorizations left unfinished are forgotten after this many seconds.
    pending_lifetime: int = 600
    #: Largest form or JSON body accepted by the authorization server and the EHR pages.
    max_form_bytes: int = 64 * 1024
    #: Test-only: seconds a successful ``authorization_code`` or ``refresh_token`` grant
    #: waits, after its tokens are stored (the code or the old refresh token spent), before
    #: answering. Plays a slow EHR whose answer comes after the client gave up. 0: at once.
    token_answer_delay: float = 0.0
