"""OperationOutcome responses: every FHIR error the sandbox returns is one.

Views raise :class:`FHIRError`; the blueprint turns it into an
``application/fhir+json`` OperationOutcome with the right status. Messages
must never quote a token or other secret: they are shown to clients and logged.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from flask import Response

FHIR_JSON = "application/fhir+json"

#: Default OperationOutcome issue code per HTTP status.
ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "deleted",
    413: "too-long",
    415: "not-supported",
    422: "processing",
}


class FHIRError(Exception):
    """An error to answer with an OperationOutcome."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or ISSUE_CODES.get(status, "exception" if status >= 500 else "invalid")
        self.headers = dict(headers or {})


def outcome_body(diagnostics: str, code: str, severity: str = "error") -> bytes:
    """JSON bytes of a one-issue OperationOutcome."""
    return orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
        }
    )


def error_response(error: FHIRError) -> Response:
    """The HTTP response for a :class:`FHIRError`."""
    response = Response(
        outcome_body(error.diagnostics, error.code), status=error.status, mimetype=FHIR_JSON
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response
