"""``connect()`` in FHIR proxy mode: the session from the hub's proxy, and no EHR token.

When the hub runs in proxy mode the single-user environment holds
``SMART_FHIR_PROXY_URL`` instead of the token API's URL. The kernel then never
sees an EHR token: it sends its own JupyterHub API token to the proxy, which
forwards each request with the EHR token and records it. This provider asks the
proxy's ``_context`` endpoint for the session (the proxy URL of the user's
EHR, the patient, the granted scopes) and hands the client the JupyterHub
token as the bearer token for that URL, so the client, its paging, its scope
checks and its errors work as in token mode. A session that ended comes back
as :class:`~.errors.ReauthenticationRequired` with the hub's sign-in link.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import orjson

from ..smart.errors import safe_text
from .errors import ReauthenticationRequired, TokenUnavailable
from .tokens import CachingTokenProvider, TokenInfo, sign_in_link, token_info_from_mapping

__all__ = ["PROXY_URL_ENV", "ProxySessionProvider"]

PROXY_URL_ENV = "SMART_FHIR_PROXY_URL"


class ProxySessionProvider(CachingTokenProvider):
    """The session from ``{SMART_FHIR_PROXY_URL}_context``; the "token" is the server's own."""

    def __init__(self, proxy_url: str, api_token: str, *, timeout: float = 30.0) -> None:
        super().__init__()
        parts = urlsplit(proxy_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TokenUnavailable(f"{PROXY_URL_ENV} is not an http(s) URL; restart your server")
        if not api_token:
            raise TokenUnavailable("JUPYTERHUB_API_TOKEN is empty; restart your server")
        self.url = proxy_url.rstrip("/") + "/_context"
        self._api_token = api_token
        self._http = httpx.Client(
            timeout=timeout,
            headers={"Authorization": f"token {api_token}", "Accept": "application/json"},
            follow_redirects=False,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def _fetch(self) -> TokenInfo:
        try:
            response = self._http.get(self.url)
        except httpx.TransportError as exc:
            raise TokenUnavailable(
                f"could not reach the hub's FHIR proxy at {self.url} ({type(exc).__name__}); "
                "try again in a minute"
            ) from None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200:
            info = token_info_from_mapping({**body, "access_token": self._api_token})
            if info.fhir_base_url is None:
                raise TokenUnavailable("the FHIR proxy answered without 'fhir_base_url'")
            return info
        if response.status_code == 401 and body.get("error") == "reauthentication_required":
            raise ReauthenticationRequired(sign_in_link(body.get("login_url")))
        said = body.get("message")
        detail = f" (the proxy says: {safe_text(said, 300)})" if isinstance(said, str) else ""
        raise TokenUnavailable(f"the hub's FHIR proxy answered HTTP {response.status_code}{detail}")
