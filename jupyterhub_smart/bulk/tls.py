"""Tokens and client assertions travel only over TLS, except to this machine.

SMART (App Launch and Backend Services) sends credentials only to servers
over TLS. The FHIR base URL and the discovered token endpoint are checked
before the first request; :class:`TLSOnlyAuth` wraps the export's auth so
that no request carrying the bearer token (kick-off, status, manifest pages,
file downloads, their redirects, DELETE) ever goes out over plain HTTP.
Loopback hosts stay allowed (the sandbox), by the same rule the notebook and
the hub apply (:func:`~jupyterhub_smart.smart.fhir_rules.is_loopback_host`);
``allow_insecure_http`` (``--allow-insecure-http``) allows any host, for a
test server on a private network.
"""

from __future__ import annotations

from collections.abc import Generator
from urllib.parse import urlsplit

import httpx

from ..smart.fhir_rules import is_loopback_host
from .errors import BulkError

OPT_IN = "allow_insecure_http=True (--allow-insecure-http on the command line)"


def require_tls(url: str, what: str, allow_insecure_http: bool = False) -> str:
    """``url`` unless it is plain HTTP to another machine; else BulkError naming the opt-in.

    The message names the URL's scheme, host and port only: a file URL's
    query may be a presigned signature.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" or allow_insecure_http:
        return url
    if parts.scheme == "http" and is_loopback_host(url):
        return url
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"[:120]
    raise BulkError(
        f"refusing to send credentials to the {what} over plain {parts.scheme or 'non-https'} "
        f"({shown}): use https, or pass {OPT_IN} for a test server on a private network"
    )


class TLSOnlyAuth(httpx.Auth):
    """``inner``, but a request to a URL :func:`require_tls` refuses fails before it is sent.

    It wraps ``inner``'s sync driver, not its ``auth_flow``: an auth such as the
    notebook's overrides the driver itself. The export's client is synchronous.
    """

    def __init__(self, inner: httpx.Auth, allow_insecure_http: bool = False) -> None:
        self.inner = inner
        self.allow_insecure_http = allow_insecure_http

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        require_tls(str(request.url), "server", self.allow_insecure_http)
        yield from self.inner.sync_auth_flow(request)

    def __repr__(self) -> str:
        return f"TLSOnlyAuth({self.inner!r})"
