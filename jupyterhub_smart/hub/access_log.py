"""JupyterHub's access log without the SMART values it would otherwise print.

JupyterHub logs every request with its URL and, for a redirect, its
``Location``, scrubbing parameters named like ``token``, ``code`` or
``state``. A SMART sign-in adds two more that must stay out of logs: the
OpenID ``nonce`` (it binds the id_token to this sign-in) and the EHR's
``launch`` handle (a bearer reference to the user's EHR session and
patient). Both appear on ``/hub/oauth_login?...&launch=`` and in the redirect
to the EHR's authorize endpoint. The hub's log function is wrapped so that
their values read ``[secret]``, and JupyterHub's own scrubbing still applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["SECRET_PARAMS", "scrub_url", "scrubbing"]

#: Query parameters whose values never reach the access log.
SECRET_PARAMS = frozenset({"nonce", "launch"})


def scrub_url(url: str) -> str:
    """``url`` with the value of every SECRET_PARAMS parameter replaced by ``[secret]``."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parts.query.split("&")
    scrubbed = [
        f"{pair.split('=', 1)[0]}=[secret]" if pair.split("=", 1)[0] in SECRET_PARAMS else pair
        for pair in pairs
    ]
    if scrubbed == pairs:
        return url
    return urlunsplit(parts._replace(query="&".join(scrubbed)))


class _ScrubbingLog:
    """A tornado ``log_function`` that hands another one the request with scrubbed URLs.

    It runs once the response is sent, so the request URI and Location header are
    rewritten for the log call only and restored after it.
    """

    def __init__(self, log_function: Callable[[Any], None]) -> None:
        self.log_function = log_function

    def __call__(self, handler: Any) -> None:
        request, headers = handler.request, handler._headers
        uri, location = request.uri, headers.get("Location")
        try:
            request.uri = scrub_url(uri)
            if location:
                headers["Location"] = scrub_url(location)
            self.log_function(handler)
        finally:
            request.uri = uri
            if location:
                headers["Location"] = location


def scrubbing(log_function: Callable[[Any], None]) -> Callable[[Any], None]:
    """``log_function`` wrapped to log SECRET_PARAMS as ``[secret]`` (once, however often)."""
    if isinstance(log_function, _ScrubbingLog):
        return log_function
    return _ScrubbingLog(log_function)
