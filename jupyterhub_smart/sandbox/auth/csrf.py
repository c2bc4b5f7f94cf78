"""CSRF protection for the sandbox's HTML forms (synchronizer token in the session).

The sign-in, patient picker, consent and revoke forms change state; each POST
must carry the token stored in the (signed, HttpOnly, SameSite=Lax) session
cookie, compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

FIELD = "csrf_token"


def csrf_token() -> str:
    """The session's token, created on first use (templates call this)."""
    token = session.get(FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[FIELD] = token
    return token


def check_csrf() -> None:
    """Abort with 400 unless the form's token matches the session's."""
    sent = request.form.get(FIELD, "")
    expected = session.get(FIELD)
    if not isinstance(expected, str) or not sent or not hmac.compare_digest(sent, expected):
        abort(
            400,
            description="The form's CSRF token is missing or does not match this session; "
            "reload the page and try again.",
        )
