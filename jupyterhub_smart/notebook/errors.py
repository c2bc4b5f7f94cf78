"""Errors a researcher meets in a notebook, each saying what happened and what to do.

Every message is safe to print in a notebook that will be shared and to write
to a log: no access token, API token or response body that could echo one is
ever part of it. URLs in messages are the ones the client built from the FHIR
base and the search parameters (no credentials ride in URLs here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "FHIRConnectionError",
    "FHIRError",
    "NoPatientInContext",
    "NotInSMARTHub",
    "ReauthenticationRequired",
    "SMARTNotebookError",
    "ScopeNotGranted",
    "TokenUnavailable",
    "UnsafeURL",
]


class SMARTNotebookError(Exception):
    """Base class: catch this to handle every error of the notebook client."""


class FHIRError(SMARTNotebookError):
    """The FHIR server answered with an error (or something that is not FHIR).

    ``status`` is the HTTP status (``None`` when no answer came), ``url`` the
    request URL, ``diagnostics`` the OperationOutcome's issue texts, and
    ``outcome`` the OperationOutcome itself when the server sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str | None = None,
        diagnostics: Sequence[str] = (),
        outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.diagnostics = list(diagnostics)
        self.outcome = outcome


class FHIRConnectionError(FHIRError):
    """No answer from the FHIR server (refused, reset, timed out) after the retries."""


class UnsafeURL(FHIRError):
    """A URL (a paging ``next`` link) points outside the FHIR base the token belongs to."""


class TokenUnavailable(SMARTNotebookError):
    """The hub's token API did not hand out an access token (and it is not a re-login case)."""


class ReauthenticationRequired(TokenUnavailable):
    """The hub can no longer refresh the EHR session: sign in again at ``login_url``."""

    def __init__(self, login_url: str | None) -> None:
        self.login_url = login_url
        where = (
            f"open {login_url} in your browser"
            if login_url
            else "sign in to JupyterHub again (log out, then log in)"
        )
        super().__init__(
            "Your EHR session has ended and the hub cannot refresh it: "
            f"{where}, then run this cell again. Your kernel and its variables are kept."
        )


class ScopeNotGranted(SMARTNotebookError):
    """The granted SMART scopes cannot cover a request (raised before sending it)."""

    def __init__(self, message: str, *, needed: Sequence[str], granted: Sequence[str]) -> None:
        super().__init__(message)
        self.needed = list(needed)
        self.granted = list(granted)


class NotInSMARTHub(SMARTNotebookError):
    """``connect()`` without arguments outside a jupyterhub-smart single-user server."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        super().__init__(
            "connect() needs a jupyterhub-smart hub, but "
            + " and ".join(missing)
            + (" is" if len(missing) == 1 else " are")
            + " not set in this environment. In a server started by a jupyterhub-smart hub "
            "both are set for you (restart your server from the hub's home page if they are "
            "missing). Anywhere else, pass the server and a token yourself: "
            "connect(fhir_base_url='https://ehr.example.org/fhir', token=...) or "
            "connect(fhir_base_url=..., token_provider=a_function_returning_a_token)."
        )


class NoPatientInContext(SMARTNotebookError):
    """A patient-centred call (``client.patient``, ``observations()``) in a session without a patient."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs a patient, but this session has none in its SMART context "
            "(launch the hub from a patient's chart in the EHR, or sign in with a patient "
            "picker). To read any patient's data, pass patient='<id>' where the method "
            "takes it, with user/ or system/ scopes."
        )
