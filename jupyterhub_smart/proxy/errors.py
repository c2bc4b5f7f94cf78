"""The one error type of the proxy: an HTTP status and a JSON body the caller can act on."""

from __future__ import annotations

from typing import Any

__all__ = ["ProxyError"]

#: OperationOutcome issue codes for the statuses the proxy answers with.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
    429: "throttled",
    502: "transient",
    503: "transient",
    504: "timeout",
}


class ProxyError(Exception):
    """A request the proxy answers itself: ``status``, ``error`` code, message, extras.

    The message says what was wrong and what to do; it never holds a token
    (callers build it from checked values only).
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON answer: an OperationOutcome (what FHIR clients show) with ``error``,
        ``message`` and the extras (``login_url``...) beside it for programs."""
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": _ISSUE_CODES.get(self.status, "processing"),
                    "diagnostics": self.message,
                }
            ],
            "error": self.error,
            "message": self.message,
            **self.extra,
        }
