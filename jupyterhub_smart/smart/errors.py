"""Errors of the SMART protocol core.

Every failure the core can meet is a :class:`SMARTError`. Its ``str()`` is
written to be shown on an error page and written to a log as it is: it names
what went wrong (an issuer, an endpoint, a check) and never carries a token,
an authorization code, a client secret, a client assertion or a raw id_token.
The hub turns ``.status`` into the HTTP status it answers with and ``.error``
into a short machine-readable code, so that it needs no ``isinstance`` ladder.

Status conventions (what the hub should answer):

* 400: bad input from the browser (an unknown ``iss``, a replayed code);
* 403: a policy refusal (an id_token that fails a check, scopes not granted);
* 502: the EHR misbehaved (bad discovery document, 500 from the token endpoint);
* 504: the EHR did not answer in time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "DiscoveryError",
    "IDTokenError",
    "LaunchContextError",
    "SMARTError",
    "ScopeError",
    "TokenEndpointError",
    "UnknownIssuer",
    "redact",
    "safe_text",
]

_UNSAFE_CHARS = re.compile(r"[^\x20-\x7e]")


def safe_text(value: object, limit: int = 120) -> str:
    """Make an untrusted value fit for a log line or an error page.

    Control characters and non-ASCII are replaced (no log injection, no
    terminal escapes), and the text is cut at ``limit`` characters so that an
    attacker cannot fill a log with one value. It does *not* HTML-escape: pages
    must escape as usual.
    """
    text = _UNSAFE_CHARS.sub("?", str(value))
    if len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``[redacted]``.

    Used on text that a peer sent back (an OAuth ``error_description``) which
    could echo what we sent it: the code, the refresh token, the assertion.
    Secrets shorter than 4 characters are ignored so that redaction cannot be
    used to blank out ordinary words.
    """
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


class SMARTError(Exception):
    """Base of every error raised by :mod:`jupyterhub_smart.smart`.

    ``str(error)`` is safe to show and to log. ``status`` is the HTTP status the
    hub should answer; ``error`` a short machine code.
    """

    status: int = 400
    error: str = "smart_error"

    def __init__(
        self, message: str, *, status: int | None = None, error: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, error={self.error!r})"
        )


class UnknownIssuer(SMARTError):
    """The ``iss`` is not on the allow-list (or is not a usable issuer URL).

    Raised before any network request is made: an unknown issuer is never
    contacted, which is both the mix-up defence and a server-side request
    forgery guard.
    """

    status = 400
    error = "unknown_issuer"


class DiscoveryError(SMARTError):
    """The EHR's SMART configuration could not be fetched or is not acceptable."""

    status = 502
    error = "discovery_failed"


class TokenEndpointError(SMARTError):
    """The token (or revocation) endpoint refused or misbehaved.

    ``oauth_error`` is the OAuth ``error`` code the server sent (for example
    ``invalid_grant``), or ``None`` when the failure was not an OAuth error
    response (a 500, a timeout, HTML instead of JSON).
    """

    status = 502
    error = "token_request_failed"

    def __init__(
        self,
        message: str,
        *,
        oauth_error: str | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message, status=status, error=error)
        self.oauth_error = oauth_error


class IDTokenError(SMARTError):
    """The id_token failed a check; the message names the check."""

    status = 403
    error = "invalid_id_token"


class ScopeError(SMARTError):
    """Scopes that are required were not granted; ``missing`` lists them."""

    status = 403
    error = "insufficient_scope"

    def __init__(
        self, message: str, *, missing: Iterable[str] = (), status: int | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.missing: list[str] = list(missing)


class LaunchContextError(SMARTError):
    """The launch context in the token response is malformed (the EHR's fault)."""

    status = 502
    error = "invalid_launch_context"
