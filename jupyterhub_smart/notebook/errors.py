"""Errors a researcher meets in a notebook, each saying what happened and what to do.

Every message is safe to print in a notebook that will be shared and to write
to a log: no access token, API token or response body that could echo one is
ever part of it. URLs in messages are the ones the client built from the FHIR
base and the search parameters (no credentials ride in URLs here).
"""

from __future__ import annotations

import html
import linecache
import os
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "FHIRConnectionError",
    "FHIRError",
    "IncompleteSearch",
    "IncompleteSearchWarning",
    "NoPatientInContext",
    "NotInSMARTHub",
    "OperationNotDeclared",
    "ReauthenticationRequired",
    "SMARTNotebookError",
    "ScopeNotGranted",
    "TerminologyUnavailable",
    "TokenUnavailable",
    "UnsafeURL",
]


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_RED, _RESET = "\x1b[31m", "\x1b[0m"


def _call_site(error: BaseException) -> str | None:
    """``line N: <source>`` of the caller's line that led into this package, if known.

    The traceback runs from the notebook cell into our code; the frame just
    before the first frame of ``jupyterhub_smart`` is the researcher's own
    line, the one worth showing.
    """
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    ours = [i for i, (name, _) in enumerate(frames) if os.path.abspath(name).startswith(_PACKAGE)]
    index = ours[0] - 1 if ours else len(frames) - 1
    if index < 0:
        return None
    filename, lineno = frames[index]
    source = linecache.getline(filename, lineno).strip()
    return f"line {lineno}: {source}" if source else f"line {lineno}"


class SMARTNotebookError(Exception):
    """Base class: catch this to handle every error of the notebook client.

    In Jupyter these errors show as their message (what happened, what to do,
    and the link to click when signing in again is needed) and the line of
    your code that led to them, not as a forty-line traceback through this
    package's internals, which would bury the one line that matters. For the
    full traceback, set ``SMARTNotebookError.short_traceback = False`` and run
    ``%tb``.
    """

    #: Show the short form in IPython/Jupyter (``False``: IPython's own traceback).
    short_traceback: ClassVar[bool] = True

    @property
    def _render_traceback_(self) -> Any:
        """IPython's hook for custom tracebacks (absent when ``short_traceback`` is off)."""
        if not type(self).short_traceback:
            raise AttributeError("_render_traceback_")
        return self._short_traceback

    def _short_traceback(self) -> list[str]:
        lines = [f"{_RED}{type(self).__name__}{_RESET}: {self}"]
        where = _call_site(self)
        if where:
            lines.append(f"  in your code at {where}")
        lines.append(
            "  (a jupyterhub-smart error; the full traceback: "
            "SMARTNotebookError.short_traceback = False, then %tb)"
        )
        return lines


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


class IncompleteSearch(FHIRError):
    """A search's pages ended before the number of matches its ``Bundle.total`` announced.

    Raised with ``strict=True``; otherwise the same message is an
    :class:`IncompleteSearchWarning`.
    """


class IncompleteSearchWarning(UserWarning):
    """A search's pages ended before its ``Bundle.total``: the rows are not all the matches."""


class TokenUnavailable(SMARTNotebookError):
    """The hub's token API did not hand out an access token (and it is not a re-login case)."""


class ReauthenticationRequired(TokenUnavailable):
    """The hub can no longer refresh the EHR session: sign in again at ``login_url``."""

    def __init__(self, login_url: str | None) -> None:
        #: Absolute, or root-relative (``/hub/oauth_login``) when the hub's public
        #: address is unknown to the kernel: it resolves against the notebook's page.
        self.login_url = login_url
        if not login_url:
            where = "sign in to JupyterHub again (log out, then log in)"
        elif login_url.startswith("/"):
            where = (
                f"open {login_url} on this JupyterHub's address (the one in your browser's "
                "address bar), or click 'Sign in again' in this cell's output"
            )
        else:
            where = f"open {login_url} in your browser"
        super().__init__(
            "Your EHR session has ended and the hub cannot refresh it: "
            f"{where}, then run this cell again. Your kernel and its variables are kept."
        )

    def _short_traceback(self) -> list[str]:
        """Also show the sign-in link as HTML, so that the notebook's page resolves a path.

        IPython renders a traceback more than once (the output, the execute
        reply): the link is shown the first time only.
        """
        if self.login_url and not getattr(self, "_link_shown", False):
            self._link_shown = True
            _display_link(self.login_url, "Sign in again")
        return super()._short_traceback()


def _display_link(url: str, text: str) -> None:
    """A clickable link in the cell's output (IPython's rich display; nothing elsewhere).

    Text output turns only absolute URLs into links; an HTML ``<a href>``
    also works for a root-relative one, which the browser resolves against
    the page it shows: the hub's public address, whatever the kernel sees.
    """
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython calls this hook, so it is there
        return
    if getattr(get_ipython(), "kernel", None) is None:  # a terminal shows no HTML
        return
    href = html.escape(url, quote=True)
    link = f'<a href="{href}" target="_blank" rel="noopener">{html.escape(text)}</a>'
    display(
        {"text/html": f"{link} (then run this cell again)", "text/plain": f"{text}: {url}"},
        raw=True,
    )


class ScopeNotGranted(SMARTNotebookError):
    """The granted SMART scopes cannot cover a request (raised before sending it)."""

    def __init__(self, message: str, *, needed: Sequence[str], granted: Sequence[str]) -> None:
        super().__init__(message)
        self.needed = list(needed)
        self.granted = list(granted)


class OperationNotDeclared(SMARTNotebookError):
    """The FHIR server's CapabilityStatement does not declare this interaction or operation.

    Raised before sending: ``declared`` lists what the server does declare
    for that resource type (or at system level), so the researcher can pick
    one of those or ask the EHR's team.
    """

    def __init__(self, message: str, *, declared: Sequence[str]) -> None:
        super().__init__(message)
        self.declared = list(declared)


class TerminologyUnavailable(OperationNotDeclared):
    """The FHIR server declares no terminology service (``$lookup``/``$expand``)."""


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
