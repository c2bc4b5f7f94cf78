"""The hub's errors: SMARTErrors the handlers turn into a status, a code and a page.

Like the protocol core's errors (:mod:`jupyterhub_smart.smart.errors`), each
``str()`` is safe to show and to log, ``status`` is the HTTP status to answer
and ``error`` a short machine-readable code, so a handler needs no
``isinstance`` ladder to answer one.
"""

from __future__ import annotations

from ..smart.errors import SMARTError

__all__ = [
    "EHRUnavailable",
    "MissingPatient",
    "PendingLoginError",
    "PendingLoginsFull",
    "ReauthenticationRequired",
    "RefreshRateLimited",
]


class PendingLoginError(SMARTError):
    """The callback's ``state`` does not match a pending login of this browser.

    The message never contains the state.
    """

    status = 400
    error = "invalid_state"


class PendingLoginsFull(SMARTError):
    """No room for another sign-in: this client's bound (429) or the hub's (503)."""

    error = "too_many_sign_ins"

    def __init__(self, message: str, *, status: int, retry_after: int) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ReauthenticationRequired(SMARTError):
    """The user's tokens cannot be refreshed: they must sign in again.

    ``recorded``: the ``reauthentication-required`` audit event of this
    occurrence is already written (by the refresh that found out, with the
    EHR's reason). The token API then records nothing more: one occurrence,
    one record, however many callers share the refresh that raised it.
    """

    status = 401
    error = "reauthentication_required"

    def __init__(self, message: str, *, recorded: bool = False) -> None:
        super().__init__(message)
        self.recorded = recorded


class RefreshRateLimited(SMARTError):
    """A forced refresh was asked for too soon after the last one for this user.

    ``retry_after``: whole seconds until the hub would ask the EHR again.
    """

    status = 429
    error = "refresh_rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class EHRUnavailable(SMARTError):
    """A refresh failed, or is held back after one (:mod:`.backoff`); retry later.

    ``retry_after``: whole seconds until the hub asks the EHR again.
    """

    status = 503
    error = "ehr_unavailable"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class MissingPatient(SMARTError):
    """``launch/patient`` was asked for but the EHR chose no patient."""

    status = 403
    error = "no_patient_context"
