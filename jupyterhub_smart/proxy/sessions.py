"""Whose request is this, and which EHR token does it travel with: asked of the hub, cached.

The proxy holds no user database and no refresh token. For a caller's
JupyterHub token it asks the hub's token API, sending that token (so the hub
applies every check it applies to a notebook: the token's owner, the
``custom:smart:token`` scope, blocked or withdrawn users, refresh, the audit
record of the hand-out) and its own service token in
``X-SMART-Proxy-Authorization`` (in proxy mode the token API answers no one
else). The answer (user, issuer, access token, scopes, context) is cached per
caller token, like the notebook's token cache:

* one fetch per token lifetime (until ``min(30 s, a quarter of the lifetime)``
  before expiry), and at least every ``revalidate_interval`` (60 s) so that a
  withdrawn user or a changed grant shows within that time;
* between fetches, the caller's JupyterHub token itself is checked with the
  hub's ``GET /hub/api/user`` at most every ``token_check_interval`` (2 s): it
  must still exist, belong to the same user and hold ``custom:smart:token``.
  That is one indexed lookup on the hub and writes no audit record (a token
  API fetch writes a ``token-issued`` record), so a revoked or deleted token
  stops working within seconds at little cost;
* concurrent requests with one caller token share one fetch;
* ``rejected=`` reports an access token the EHR refused (its SHA-256, as the
  notebook does) so the hub refreshes at once;
* while the hub cannot be reached (restarting, down), a cached answer is used
  until its access token expires; then 503.

Only a hash of the caller's token is kept as the cache key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from ..smart.fingerprint import access_token_fingerprint
from .config import ProxyConfig
from .errors import ProxyError

__all__ = ["PROXY_CREDENTIAL_HEADER", "Session", "Sessions"]

log = logging.getLogger(__name__)

PROXY_CREDENTIAL_HEADER = "X-SMART-Proxy-Authorization"
#: The scope the token API requires (jupyterhub_smart.hub.scopes.TOKEN_SCOPE).
TOKEN_SCOPE = "custom:smart:token"  # noqa: S105 (a scope name, not a secret)
MAX_MARGIN = 30.0
MARGIN_FRACTION = 0.25
#: Never use a cached token closer than this to its expiry, even with the hub away.
EXPIRY_SAFETY = 1.0
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """What the hub said about one caller token."""

    user: str
    issuer: str
    fhir_base_url: str
    access_token: str = field(repr=False)
    expires_at: float | None
    scopes: tuple[str, ...]
    context: dict[str, Any]
    login_url: str | None
    fresh_until: float
    #: Until when the caller's JupyterHub token counts as checked (wall clock).
    checked_until: float = 0.0

    def usable(self, now: float) -> bool:
        """The access token has not expired (with a second's safety)."""
        return self.expires_at is None or now < self.expires_at - EXPIRY_SAFETY


def _cache_key(caller_token: str) -> str:
    return hashlib.sha256(caller_token.encode("utf-8")).hexdigest()


def _scopes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(s for item in value if isinstance(item, str) for s in item.split())
    return ()


class Sessions:
    """The cache of hub answers, keyed by a hash of the caller's token."""

    def __init__(self, config: ProxyConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http
        self.url = f"{config.hub_api_url}/smart/token"
        self._cache: OrderedDict[str, Session] = OrderedDict()
        self._inflight: dict[tuple[str, str | None], asyncio.Future[Session]] = {}
        self._checks: dict[str, asyncio.Future[Session]] = {}
        #: Requests to the hub's token API (for logs and tests).
        self.fetches = 0

    def forget(self, caller_token: str) -> None:
        self._cache.pop(_cache_key(caller_token), None)

    async def get(self, caller_token: str, *, rejected: str | None = None) -> Session:
        """The session for ``caller_token``; ``rejected``: the EHR refused that access token."""
        key = _cache_key(caller_token)
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and rejected is None and now < cached.fresh_until:
            self._cache.move_to_end(key)
            if now < cached.checked_until:
                return cached
            return await asyncio.shield(self._start_check(key, caller_token, cached))
        fingerprint = access_token_fingerprint(rejected) if rejected else None
        flight = (key, fingerprint)
        future = self._inflight.get(flight)
        if future is None:
            future = asyncio.ensure_future(self._fetch(key, caller_token, fingerprint))
            self._inflight[flight] = future
            future.add_done_callback(lambda _f: self._inflight.pop(flight, None))
        return await asyncio.shield(future)

    async def _fetch(self, key: str, caller_token: str, rejected: str | None) -> Session:
        self.fetches += 1
        try:
            response = await self.http.get(
                self.url,
                params={"rejected": rejected} if rejected else None,
                headers={
                    "Authorization": f"token {caller_token}",
                    PROXY_CREDENTIAL_HEADER: f"token {self.config.service_token}",
                    "Accept": "application/json",
                },
                timeout=self.config.hub_timeout,
            )
        except httpx.HTTPError as exc:
            return self._hub_away(key, f"unreachable ({type(exc).__name__})")
        if response.status_code in (502, 503, 504) and not _hub_said(response):
            return self._hub_away(key, f"answered {response.status_code}")
        body = _json(response)
        if response.status_code != 200 or body is None:
            self._cache.pop(key, None)
            raise _refusal(response.status_code, body)
        session = self._session(body)
        if rejected is not None and access_token_fingerprint(session.access_token) == rejected:
            # The hub kept the refused token (a forced refresh was rate limited).
            session.fresh_until = 0.0
        session.checked_until = time.time() + self.config.token_check_interval
        self._cache[key] = session
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_SESSIONS:
            self._cache.popitem(last=False)
        return session

    async def get_deferred(
        self, caller_token: str
    ) -> tuple[Session, asyncio.Future[Session] | None]:
        """:meth:`get`, except that a due token check is started and returned, not awaited.

        The caller forwards the request meanwhile and awaits the check before it
        sends the caller anything, so the check adds no latency and a revoked
        token still gets no data.
        """
        key = _cache_key(caller_token)
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached.checked_until <= now < cached.fresh_until:
            self._cache.move_to_end(key)
            return cached, self._start_check(key, caller_token, cached)
        return await self.get(caller_token), None

    def _start_check(self, key: str, caller_token: str, cached: Session) -> asyncio.Future[Session]:
        """The token check of ``key``, shared by concurrent requests."""
        check = self._checks.get(key)
        if check is None:
            check = asyncio.ensure_future(self._check(key, caller_token, cached))
            self._checks[key] = check
            check.add_done_callback(lambda _f: self._checks.pop(key, None))
            # A request refused for another reason never awaits it: no "never retrieved".
            check.add_done_callback(lambda f: f.cancelled() or f.exception())
        return check

    async def _check(self, key: str, caller_token: str, cached: Session) -> Session:
        """Is the caller's JupyterHub token still good for ``cached.user``? (cheap: no record)"""
        try:
            response = await self.http.get(
                f"{self.config.hub_api_url}/user",
                headers={"Authorization": f"token {caller_token}", "Accept": "application/json"},
                timeout=self.config.hub_timeout,
            )
        except httpx.HTTPError as exc:
            return self._hub_away(key, f"unreachable ({type(exc).__name__})")
        if response.status_code in (502, 503, 504):
            return self._hub_away(key, f"answered {response.status_code}")
        body = _json(response) if response.status_code == 200 else None
        scopes = body.get("scopes") if body is not None else None
        if body is None or body.get("name") != cached.user:
            self._cache.pop(key, None)
            log.info("FHIR proxy: a caller's JupyterHub token is no longer good (revoked?)")
            raise _refusal(401 if response.status_code in (200, 401, 403) else 502, None)
        if not isinstance(scopes, list) or not {
            TOKEN_SCOPE,
            f"{TOKEN_SCOPE}!user={cached.user}",
        } & set(scopes):
            self._cache.pop(key, None)
            raise ProxyError(
                403,
                "insufficient_scope",
                f"This JupyterHub token does not hold {TOKEN_SCOPE} any more.",
                scope=TOKEN_SCOPE,
            )
        cached.checked_until = time.time() + self.config.token_check_interval
        return cached

    def _hub_away(self, key: str, why: str) -> Session:
        """The hub cannot be asked: the cached session while its token lives, else 503."""
        cached = self._cache.get(key)
        now = time.time()
        if cached is not None and cached.usable(now):
            log.warning("hub token API %s: serving a cached EHR token until it expires", why)
            cached.fresh_until = now + 1.0  # ask again soon, not on every request
            return cached
        self._cache.pop(key, None)
        log.error("hub token API %s and no unexpired token cached: 503", why)
        raise ProxyError(
            503,
            "hub_unavailable",
            "The hub cannot be reached to check your token or get a fresh EHR token; retry "
            "in a minute.",
            headers={"Retry-After": "5"},
        )

    def _session(self, body: dict[str, Any]) -> Session:
        token = body.get("access_token")
        user, issuer = body.get("user"), body.get("iss")
        base = body.get("fhir_base_url") or issuer
        if not all(isinstance(v, str) and v for v in (token, user, issuer, base)):
            raise ProxyError(
                502,
                "hub_answer_invalid",
                "The hub's token API answered without a token, user or issuer; is the hub in "
                "proxy mode (SMARTAuthenticator.fhir_access = 'proxy')?",
            )
        expires_at = body.get("expires_at")
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            expires_at = None
        now = time.time()
        fresh_until = now + self.config.revalidate_interval
        if expires_at is not None:
            lifetime = max(float(expires_at) - now, 0.0)
            fresh_until = min(fresh_until, expires_at - min(MAX_MARGIN, MARGIN_FRACTION * lifetime))
        context = {
            k: body.get(k)
            for k in ("patient", "encounter", "fhirUser", "need_patient_banner", "smart_style_url")
        }
        login_url = body.get("login_url") if isinstance(body.get("login_url"), str) else None
        return Session(
            user=str(user),
            issuer=str(issuer).rstrip("/"),
            fhir_base_url=str(base).rstrip("/"),
            access_token=str(token),
            expires_at=float(expires_at) if expires_at is not None else None,
            scopes=_scopes(body.get("scope")),
            context=context,
            login_url=login_url,
            fresh_until=fresh_until if math.isfinite(fresh_until) else now,
        )


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _hub_said(response: httpx.Response) -> bool:
    """A 503 of the token API itself (audit or EHR unavailable), not of a proxy in front."""
    body = _json(response)
    return body is not None and isinstance(body.get("error"), str)


def _refusal(status: int, body: dict[str, Any] | None) -> ProxyError:
    """The hub's refusal, passed on with its error code and sign-in link."""
    body = body or {}
    error = body.get("error") if isinstance(body.get("error"), str) else "hub_refused"
    message = body.get("message") if isinstance(body.get("message"), str) else ""
    extra: dict[str, Any] = {}
    if isinstance(body.get("login_url"), str):
        extra["login_url"] = body["login_url"]
    headers: dict[str, str] = {}
    if status == 401 and error != "reauthentication_required":
        message = (
            "Send your JupyterHub API token (Authorization: token $JUPYTERHUB_API_TOKEN); the "
            "hub did not accept this one."
        )
        headers["WWW-Authenticate"] = 'token realm="jupyterhub"'
    if status in (429, 503):
        retry = body.get("retry_after")
        headers["Retry-After"] = str(int(retry)) if isinstance(retry, (int, float)) else "5"
    if status not in (401, 403, 429, 503):
        status = 502
    return ProxyError(
        status, str(error), str(message) or f"The hub refused ({status}).", headers=headers, **extra
    )
