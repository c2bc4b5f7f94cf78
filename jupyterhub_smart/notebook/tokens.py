"""Where access tokens come from: the hub's token API, a fixed token, or a function.

A notebook never holds a refresh token. It asks a *token provider* for an
access token before each request; the provider caches the token until shortly
before its ``expires_at`` and then fetches a new one (from the hub, which
refreshes with the EHR when needed). A six-hour analysis therefore outlives
any single access token without the researcher noticing.

Concurrency: threads and asyncio tasks that need a token at the same moment
share one fetch. Sync callers wait on a lock and then find the new token in
the cache; async callers of one event loop await a single executor job that
takes the same lock, so a burst of 50 tasks costs the hub one request.

``invalidate(token)`` is how the HTTP layer reports a 401 from the FHIR
server: the cached token is dropped only if it is still the one that failed,
so a burst of 401s on one token causes one fetch, not one per request. The
hub's provider then tells the hub which token was refused (its SHA-256, never
the token), so that the hub refreshes at once instead of handing back the same
unexpired token: a revoked session ends in ``ReauthenticationRequired`` on the
next request, not when the token would have expired.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
import orjson

from ..smart.errors import safe_text
from ..smart.fingerprint import access_token_fingerprint
from ..smart.retry_after import retry_after_seconds
from .errors import ReauthenticationRequired, TokenUnavailable

__all__ = [
    "CachingTokenProvider",
    "CallableTokenProvider",
    "HubTokenProvider",
    "StaticTokenProvider",
    "TokenInfo",
    "TokenProvider",
    "sign_in_link",
    "token_info_from_mapping",
]

log = logging.getLogger(__name__)

#: Never keep using a token closer than this to its expiry (seconds)...
MAX_MARGIN = 30.0
#: ...nor for the last quarter of the lifetime it had when it was fetched
#: (so that a 2-second sandbox token is still cached for 1.5 s).
MARGIN_FRACTION = 0.25


@dataclass(frozen=True)
class TokenInfo:
    """An access token and the SMART context that came with it.

    ``expires_at`` is Unix seconds (``None``: unknown, used until the FHIR
    server refuses it). ``scopes`` is what the EHR granted (empty: unknown, so
    the client does not check scopes before requests).
    """

    access_token: str = field(repr=False)
    fhir_base_url: str | None = None
    expires_at: float | None = None
    scopes: tuple[str, ...] = ()
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    need_patient_banner: bool = False
    smart_style_url: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type


TokenLike = str | Mapping[str, Any] | TokenInfo


@runtime_checkable
class TokenProvider(Protocol):
    """What the client needs from a source of access tokens."""

    def get(self) -> TokenInfo:
        """A token that is not about to expire (blocking)."""
        ...

    async def aget(self) -> TokenInfo:
        """The same, for asyncio code."""
        ...

    def invalidate(self, access_token: str) -> None:
        """The FHIR server refused ``access_token``: do not hand it out again."""
        ...


def _scopes(value: Any) -> tuple[str, ...]:
    """Granted scopes as a tuple; the token API may send a list or a space-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        out: list[str] = []
        for item in value:
            out.extend(item.split())
        return tuple(out)
    raise TokenUnavailable("the token's 'scope' is neither a string nor a list of strings")


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TokenUnavailable(f"the token's {key!r} is not a string")
    return value


def _http_url(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TokenUnavailable(f"the token's {what} is not an http(s) URL")
    return value.rstrip("/")


def token_info_from_mapping(
    data: Mapping[str, Any], *, now: float | None = None, default_base: str | None = None
) -> TokenInfo:
    """Validate a token response (the hub token API's, or an OAuth token response).

    Accepts ``expires_at`` (Unix seconds) or ``expires_in``; ``scope`` as a
    list or a space-separated string. Error messages name the field, never the
    token.
    """
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenUnavailable("the token response has no 'access_token'")
    token_type = data.get("token_type") or "Bearer"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenUnavailable("the token response's 'token_type' is not Bearer")
    expires_at: float | None = None
    raw_at, raw_in = data.get("expires_at"), data.get("expires_in")
    for name, raw in (("expires_at", raw_at), ("expires_in", raw_in)):
        if raw is not None and (
            isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw)
        ):
            raise TokenUnavailable(f"the token response's {name!r} is not a number")
    if raw_at is not None:
        expires_at = float(raw_at)
    elif raw_in is not None:
        expires_at = (time.time() if now is None else now) + float(raw_in)
    banner = data.get("need_patient_banner", False)
    if not isinstance(banner, bool):
        raise TokenUnavailable("the token response's 'need_patient_banner' is not true/false")
    base = _http_url(_optional_str(data, "fhir_base_url"), "fhir_base_url") or (
        default_base.rstrip("/") if default_base else None
    )
    return TokenInfo(
        access_token=token,
        fhir_base_url=base,
        expires_at=expires_at,
        scopes=_scopes(data.get("scope")),
        patient=_optional_str(data, "patient"),
        encounter=_optional_str(data, "encounter"),
        fhir_user=_optional_str(data, "fhirUser"),
        need_patient_banner=banner,
        smart_style_url=_optional_str(data, "smart_style_url"),
    )


class CachingTokenProvider:
    """Caches one token and shares each fetch among threads and asyncio tasks.

    Subclasses implement :meth:`_fetch` (blocking; it runs in a worker thread
    for async callers).
    """

    def __init__(self) -> None:
        self._info: TokenInfo | None = None
        self._fresh_until = 0.0
        self._fetch_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._async_inflight: dict[asyncio.AbstractEventLoop, asyncio.Future[TokenInfo]] = {}
        #: How many times :meth:`_fetch` ran (for logs and tests).
        self.fetches = 0

    def _fetch(self) -> TokenInfo:
        raise NotImplementedError

    def _cached(self) -> TokenInfo | None:
        info = self._info
        if info is not None and time.time() < self._fresh_until:
            return info
        return None

    def _store(self, info: TokenInfo) -> None:
        now = time.time()
        if info.expires_at is None:
            fresh_until = math.inf
        else:
            lifetime = max(info.expires_at - now, 0.0)
            fresh_until = info.expires_at - min(MAX_MARGIN, MARGIN_FRACTION * lifetime)
        with self._state_lock:
            self._info, self._fresh_until = info, fresh_until

    def get(self) -> TokenInfo:
        """The cached token if fresh, else one fetch (shared with concurrent callers)."""
        cached = self._cached()
        if cached is not None:
            return cached
        with self._fetch_lock:
            cached = self._cached()  # someone else fetched while we waited
            if cached is not None:
                return cached
            self.fetches += 1
            info = self._fetch()
            self._store(info)
            return info

    async def aget(self) -> TokenInfo:
        """Async twin of :meth:`get`: tasks of one loop await a single worker-thread fetch."""
        cached = self._cached()
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        with self._state_lock:
            future = self._async_inflight.get(loop)
            if future is None:
                future = loop.run_in_executor(None, self.get)
                self._async_inflight[loop] = future
                future.add_done_callback(lambda _f: self._forget(loop, _f))
        return await asyncio.shield(future)

    def _forget(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[TokenInfo]) -> None:
        with self._state_lock:
            if self._async_inflight.get(loop) is done:
                del self._async_inflight[loop]
        if not done.cancelled():
            done.exception()  # retrieved by the awaiters; silence "never retrieved"

    def invalidate(self, access_token: str) -> None:
        """Drop the cached token if it is still ``access_token`` (one refetch per failure)."""
        with self._state_lock:
            if self._info is not None and self._info.access_token == access_token:
                self._fresh_until = 0.0


class StaticTokenProvider(CachingTokenProvider):
    """A fixed access token (scripts, tests, other hubs). It cannot be refreshed."""

    def __init__(
        self,
        token: str,
        fhir_base_url: str | None = None,
        *,
        scopes: str | list[str] | tuple[str, ...] | None = None,
        patient: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(token, str) or not token.strip():
            raise TypeError("token must be a non-empty string (the access token itself)")
        self._static = TokenInfo(
            access_token=token.strip(),
            fhir_base_url=_http_url(fhir_base_url, "FHIR base URL"),
            expires_at=expires_at,
            scopes=_scopes(scopes),
            patient=patient,
        )

    def _fetch(self) -> TokenInfo:
        return self._static


class CallableTokenProvider(CachingTokenProvider):
    """Tokens from a function you supply (e.g. one that runs a client_credentials grant).

    The function takes no arguments and returns the access token as a string,
    a token-response mapping (``access_token``, ``expires_in`` or
    ``expires_at``, optional ``scope``, ``patient``, ``fhir_base_url``...), or a
    :class:`TokenInfo`. It is called once at first use, again shortly before
    the token's expiry, and again after the FHIR server refused a token.
    """

    def __init__(self, fn: Callable[[], TokenLike], fhir_base_url: str | None = None) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError("token_provider must be a function taking no arguments")
        self._fn = fn
        self._base = _http_url(fhir_base_url, "FHIR base URL")

    def _fetch(self) -> TokenInfo:
        result = self._fn()
        if isinstance(result, TokenInfo):
            return result if result.fhir_base_url else replace(result, fhir_base_url=self._base)
        if isinstance(result, str):
            if not result.strip():
                raise TokenUnavailable("the token provider returned an empty token")
            return TokenInfo(access_token=result.strip(), fhir_base_url=self._base)
        if isinstance(result, Mapping):
            return token_info_from_mapping(result, default_base=self._base)
        raise TokenUnavailable(
            "the token provider must return a token string, a token-response dict or a "
            f"TokenInfo, not {type(result).__name__}"
        )


#: Environment variable JupyterHub 5 and 6 give a single-user server when
#: ``JupyterHub.public_url`` is set: the hub's address in the user's browser.
PUBLIC_HUB_URL_ENV = "JUPYTERHUB_PUBLIC_HUB_URL"
_ROOT_RELATIVE = re.compile(r"^/(?![/\\])[^\s\\]*$")


def sign_in_link(login_url: object) -> str | None:
    """The hub's "sign in again" URL as a link that works in the user's browser, or None.

    The hub answers an absolute URL when it knows its public address, else the
    path alone (``/hub/oauth_login``). A kernel reaches the hub at its internal
    API address (``http://127.0.0.1:8081``, ``http://hub:8081`` on Kubernetes)
    that the browser cannot open, so the path is never joined to that. It is
    made absolute with ``JUPYTERHUB_PUBLIC_HUB_URL`` when JupyterHub set it,
    and otherwise stays root-relative: as a link in the notebook's HTML
    output it resolves against the page, which is on the hub's public address.
    Anything else (another scheme, ``//host``, ``/\\host``) is dropped.
    """
    if not isinstance(login_url, str) or not login_url:
        return None
    parts = urlsplit(login_url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return login_url
    if not _ROOT_RELATIVE.match(login_url):
        return None
    public = urlsplit(os.environ.get(PUBLIC_HUB_URL_ENV, ""))
    if public.scheme in ("http", "https") and public.netloc:
        return f"{public.scheme}://{public.netloc}{login_url}"
    return login_url


class HubTokenProvider(CachingTokenProvider):
    """Access tokens from the hub: ``GET {SMART_TOKEN_API_URL}`` with the server's API token.

    The hub keeps the refresh token and refreshes with the EHR; this side only
    caches the short-lived access token it hands out. A new EHR launch for
    another patient shows up here on the next fetch, with its new context.

    After :meth:`invalidate` (the FHIR server answered 401), fetches carry
    ``?rejected=<SHA-256 of the refused token>`` until the hub hands out
    another token, so the hub refreshes now (or says to sign in again) rather
    than returning the same token until it expires.

    A 502/503/504 (the hub restarting, its database or the EHR out) is retried
    ``retries`` times. A ``Retry-After`` up to ``max_retry_after`` seconds is
    waited out, so a kernel rides through a short outage; a longer one is
    raised at once as :class:`TokenUnavailable` saying when to try again,
    rather than blocking a cell for minutes.
    """

    def __init__(
        self,
        url: str,
        api_token: str,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        max_retry_after: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TokenUnavailable(
                "SMART_TOKEN_API_URL is not an http(s) URL; restart your server from the hub"
            )
        if not api_token:
            raise TokenUnavailable("JUPYTERHUB_API_TOKEN is empty; restart your server")
        self.url = url
        self._retries = retries
        #: The longest ``Retry-After`` of a 502/503/504 that is waited out here; a longer
        #: one (the hub's per-EHR back-off can reach minutes) is an error saying when.
        self._max_retry_after = max_retry_after
        #: SHA-256 of the token the FHIR server refused, until the hub gives another one.
        self._rejected: str | None = None
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"token {api_token}", "Accept": "application/json"},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def invalidate(self, access_token: str) -> None:
        """Drop the cached token if it is still ``access_token``, and report it on the next fetch."""
        with self._state_lock:
            if self._info is not None and self._info.access_token == access_token:
                self._fresh_until = 0.0
                self._rejected = access_token_fingerprint(access_token)

    def _fetch(self) -> TokenInfo:
        with self._state_lock:
            rejected = self._rejected
        params = {"rejected": rejected} if rejected else None
        info = self._request(params)
        if rejected is not None:
            with self._state_lock:
                if (
                    self._rejected == rejected
                    and access_token_fingerprint(info.access_token) != rejected
                ):
                    self._rejected = None  # the hub replaced the refused token
        return info

    def _request(self, params: dict[str, str] | None) -> TokenInfo:
        response: httpx.Response | None = None
        for attempt in range(self._retries + 1):
            try:
                response = self._http.get(self.url, params=params)
            except httpx.TransportError as exc:
                if attempt < self._retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise TokenUnavailable(
                    f"could not reach the hub's token API at {self.url} "
                    f"({type(exc).__name__}); is the hub running? Try again in a minute."
                ) from None
            if response.status_code in (502, 503, 504) and attempt < self._retries:
                asked = retry_after_seconds(response.headers.get("Retry-After"))
                if asked is not None and asked > self._max_retry_after:
                    break
                time.sleep(asked if asked is not None else 0.5 * 2**attempt)
                continue
            break
        assert response is not None
        return self._interpret(response)

    def _body(self, response: httpx.Response) -> dict[str, Any] | None:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def _interpret(self, response: httpx.Response) -> TokenInfo:
        status = response.status_code
        body = self._body(response)
        if status == 200:
            if body is None:
                raise TokenUnavailable(f"the hub's token API at {self.url} did not answer JSON")
            info = token_info_from_mapping(body)
            if info.fhir_base_url is None:
                raise TokenUnavailable("the hub's token API answered without 'fhir_base_url'")
            log.debug("token API: new access token, expires_at=%s", info.expires_at)
            return info
        if status == 401 and body is not None and body.get("error") == "reauthentication_required":
            log.warning("token API: the hub asks the user to sign in again")
            raise ReauthenticationRequired(sign_in_link(body.get("login_url")))
        said = ""
        if body is not None and isinstance(body.get("message"), str):
            said = f" (the hub says: {safe_text(body['message'], 300)})"
        if status == 401:
            raise TokenUnavailable(
                "the hub did not accept this server's API token (JUPYTERHUB_API_TOKEN): "
                f"stop and start your server from the hub's home page{said}"
            )
        if status == 429:
            raise TokenUnavailable(
                "the FHIR server refused the access token and the hub will not refresh it again "
                f"yet (429){said}"
            )
        if status == 403:
            raise TokenUnavailable(
                "the hub refused to hand out the access token (403): the API token belongs to "
                f"another user or lacks the permission; use a server the hub started for you{said}"
            )
        if status == 404:
            raise TokenUnavailable(
                f"no token API at {self.url} (404): this hub does not run jupyterhub-smart's "
                "SMARTAuthenticator, or you are not signed in through an EHR"
            )
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        when = (
            f"try again in {math.ceil(asked)} s" if asked is not None else "try again in a minute"
        )
        raise TokenUnavailable(
            f"the hub's token API at {self.url} answered HTTP {status}{said}; {when}"
        )
