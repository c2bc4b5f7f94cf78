"""``GET /hub/api/smart/token``: a fresh SMART access token for the caller's notebook.

The single-user server (or any API token of the user) asks here instead of
holding EHR tokens itself: the refresh token never leaves the hub, and every
hand-out is recorded in the audit trail before it happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.user import User
from jupyterhub.utils import url_path_join

from ..audit import AuditUnavailable
from ..smart.errors import SMARTError
from .clients import client_address
from .database import RETRY_AFTER, DatabaseHealth, SQLAlchemyError
from .errors import EHRUnavailable, ReauthenticationRequired, RefreshRateLimited
from .inactivity import record_activity
from .metrics import TOKEN_API_SECONDS
from .proxy_mode import is_proxy_request
from .refresh import TokenRefresher
from .scopes import TOKEN_SCOPE, missing_scope_message
from .token_lookup import APITokenLookup
from .tokenstate import parse_fingerprint, token_api_payload
from .trail import HubTrail, reference

__all__ = ["SMARTTokenAPIHandler"]


class SMARTTokenAPIHandler(APIHandler):
    """``GET /hub/api/smart/token``: a fresh SMART access token for the caller.

    A token of the user holding ``custom:smart:token`` works (the single-user
    server's own, or one made on the token page; :mod:`.scopes`): being the
    user's is not enough, since JupyterHub also gives tokens in the user's name to
    services and to other users' servers the user opens. Service tokens and other
    users are refused. The refresh token never leaves the hub.

    ``?rejected=<hex SHA-256 of an access token>``: the FHIR server refused
    that token (401). If it is still the user's current token, the hub
    refreshes at once (a revoked token would otherwise be handed out until it
    expires); concurrent reports share one refresh, and one user gets at most
    one forced refresh per ``forced_refresh_interval`` (429 beyond). A
    fingerprint of an older token just gets the current one. Only a hash
    travels: the token itself must never be in a URL.
    """

    def _rejected_argument(self) -> tuple[str | None, str | None]:
        """(fingerprint, None), (None, None) when absent, or (None, error message)."""
        values = self.get_arguments("rejected", strip=False)
        if not values:
            return None, None
        if len(values) > 1:
            return None, "Send 'rejected' once: the fingerprint of the one refused token."
        try:
            return parse_fingerprint(values[0]), None
        except ValueError:
            return None, (
                "'rejected' must be the SHA-256 of the access token the FHIR server refused, "
                "as 64 hex digits (hashlib.sha256(token.encode()).hexdigest()), never the "
                "token itself."
            )

    def _json(self, status: int, body: Mapping[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")
        self.finish(orjson.dumps(dict(body)))

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        """JupyterHub's ``finish``, after :meth:`_forget_unreadable_user` (every answer)."""
        self._forget_unreadable_user()
        return super().finish(*args, **kwargs)

    def _forget_unreadable_user(self) -> None:
        """Drop the caller's user row from this request if reading it needs a dead database.

        JupyterHub's request log reads the user's name inside ``finish()``, after
        the answer is on the wire. While the database is down, another request's
        rollback may have expired that row (one session serves every request), and
        the read then raises from ``finish()``: the connection is cut and nothing
        can be answered in its place. Read it here first, where a failure still
        lets the answer go out; nothing awaits between this and the log.
        """
        user = getattr(self, "_jupyterhub_user", None)  # unset before the lookup
        if user is None:
            return
        try:
            user.name  # noqa: B018 - refreshes the row if a rollback expired it
        except SQLAlchemyError:
            self.db.rollback()
            self._jupyterhub_user = None

    def _login_url(self) -> str:
        """Where to sign in again.

        ``JupyterHub.public_url`` when configured; else this request's host if
        it came through the proxy (the user's address for the hub); else (a
        notebook calling the hub's internal API URL) the path alone, which the
        notebook resolves against the page it is shown in.
        """
        path = url_path_join(self.hub.base_url, "oauth_login")
        public_url = self.settings.get("public_url")
        if public_url:
            return f"{public_url.scheme}://{public_url.netloc}{path}"
        if "X-Forwarded-Host" in self.request.headers:
            return f"{self.request.protocol}://{self.request.host}{path}"
        return str(path)

    def _token_owner_must_reauthenticate(self) -> bool:
        """A valid API token of a user whose refresh JupyterHub just refused.

        JupyterHub 5 (and 6 with ``auth_refresh_strict``) drops the user of
        an API request when ``refresh_user`` returns False; the token itself is
        still good, so the answer is "sign in again", not "who are you".
        """
        get_token = getattr(self, "get_token", None)  # JupyterHub >= 4.1
        token = get_token() if callable(get_token) else None
        return token is not None and getattr(token, "user", None) is not None

    _database_error: SQLAlchemyError | None = None

    def get_token(self) -> Any:
        """JupyterHub's lookup of the caller's API token, without a query per call.

        The same checks as JupyterHub's ``get_token`` (:mod:`.token_lookup`).
        """
        token = self.get_auth_token()
        if token is None:
            return None
        lookup: APITokenLookup = self.authenticator.token_lookup
        return lookup.find(self.db, token)

    async def get_current_user(self) -> Any:
        """JupyterHub's lookup of the caller, noting a database failure (answered 503 in get)."""
        try:
            return await super().get_current_user()
        except SQLAlchemyError as exc:
            self._database_error = exc
            raise  # JupyterHub's prepare() logs it and rolls its session back

    async def get(self) -> None:
        health: DatabaseHealth = self.authenticator.database_health
        if self._database_error is not None:
            await health.failed(self._database_error)
            self._database_unavailable()
            return
        try:
            await health.succeeded()
            await self._answer()
        except SQLAlchemyError as exc:
            self.db.rollback()
            # The rollback expired the user's row: the request log must not read it again.
            self._jupyterhub_user = None
            await health.failed(exc)
            self._database_unavailable()

    def _database_unavailable(self) -> None:
        """503 with Retry-After: the hub cannot look up the caller or their tokens right now."""
        self.set_header("Retry-After", str(RETRY_AFTER))
        self._json(
            503,
            {
                "error": "database_unavailable",
                "message": "The hub's database is not answering; retry in a moment.",
                "retry_after": RETRY_AFTER,
            },
        )

    async def _answer(self) -> None:
        """The token API's answer once the caller has been looked up (see the class)."""
        user = self.current_user
        if user is None and self._token_owner_must_reauthenticate():
            self._json(
                401,
                {
                    "error": "reauthentication_required",
                    "message": "The EHR session has ended: sign in again.",
                    "login_url": self._login_url(),
                },
            )
            return
        if user is None:
            self.set_header("WWW-Authenticate", 'token realm="jupyterhub"')
            self._json(
                401,
                {
                    "error": "authentication_required",
                    "message": "Send a JupyterHub API token of the user "
                    "(Authorization: token $JUPYTERHUB_API_TOKEN).",
                },
            )
            return
        if not isinstance(user, User):
            self._json(
                403,
                {"error": "forbidden", "message": "Only a user's own API token gets SMART tokens."},
            )
            return
        # Before the scope check: JupyterHub takes a blocked user's roles (and so the
        # scope) away, and the answer should say why.
        withdrawn = await self.authenticator.access_withdrawn(user)
        if withdrawn is not None:
            await self.authenticator.withdraw_access(user, withdrawn)
            self._json(
                403,
                {
                    "error": "access_withdrawn",
                    "message": f"This user is {withdrawn}: no EHR access.",
                },
            )
            return
        proxy = self.authenticator.fhir_access == "proxy"
        if proxy and not is_proxy_request(self, self.authenticator.fhir_proxy_service_name):
            self.log.warning("Token API: %s asked for an EHR token in proxy mode", user.name)
            self._json(
                403,
                {
                    "error": "proxy_mode",
                    "message": "This hub runs in FHIR proxy mode: notebooks get no EHR token. "
                    "Use connect(), or send FHIR requests to the proxy "
                    "($SMART_FHIR_PROXY_URL) with your JupyterHub API token.",
                },
            )
            return
        if not self.has_scope(f"{TOKEN_SCOPE}!user={user.name}"):
            self.log.warning("Token API: a token of %s without %s refused", user.name, TOKEN_SCOPE)
            self._json(
                403,
                {
                    "error": "insufficient_scope",
                    "scope": TOKEN_SCOPE,
                    "message": missing_scope_message(TOKEN_SCOPE),
                },
            )
            return
        asked = self.get_argument("user", None)
        if asked is not None and asked != user.name:
            self.log.warning("Token API: %s asked for another user's token", user.name)
            self._json(
                403,
                {"error": "forbidden", "message": "A user can only get their own SMART token."},
            )
            return
        record_activity(self, user)  # automatic logoff: a kernel at work keeps its user in
        rejected, problem = self._rejected_argument()
        if problem is not None:
            # The value is not logged: a buggy client might have sent the token itself.
            self.log.warning("Token API: %s sent a malformed 'rejected' parameter", user.name)
            self._json(400, {"error": "invalid_request", "message": problem})
            return
        refresher: TokenRefresher = self.authenticator.refresher
        trail: HubTrail = self.authenticator.trail
        login_url = self._login_url()
        try:
            state = await refresher.fresh_auth_state(
                user, min_validity=refresher.leeway, rejected=rejected
            )
        except ReauthenticationRequired as exc:
            if not exc.recorded:  # else the refresh that found out recorded it, with why
                await trail.event(
                    "reauthentication-required",
                    outcome="failure",
                    description=str(exc),
                    username=user.name,
                    client_address=client_address(self.request),
                )
            self._json(
                401,
                {"error": exc.error, "message": str(exc), "login_url": login_url},
            )
            return
        except RefreshRateLimited as exc:
            self.set_header("Retry-After", str(exc.retry_after))
            self._json(
                429,
                {"error": exc.error, "message": str(exc), "retry_after": exc.retry_after},
            )
            return
        except EHRUnavailable as exc:
            # The refresh that failed logged it as an ERROR; the calls held back after it
            # are counted into one audit record per back-off period (.backoff).
            self.log.info("Token API for %s: %s", user.name, exc)
            self.set_header("Retry-After", str(exc.retry_after))
            self._json(
                503,
                {"error": exc.error, "message": str(exc), "retry_after": exc.retry_after},
            )
            return
        except SMARTError as exc:
            self.log.error("Token API for %s: %s", user.name, exc)
            self._json(
                503 if exc.status >= 500 else exc.status,
                {"error": "ehr_unavailable", "message": str(exc)},
            )
            return
        except AuditUnavailable:
            # A refresh stored new tokens but could not record it (the record waits in
            # memory for the disk): hand nothing out that the trail cannot account for.
            self.log.error("Token API for %s: audit trail unavailable, no token", user.name)
            self._audit_unavailable()
            return
        try:
            await trail.event(
                "token-issued",
                username=user.name,
                fhir_user=state.get("fhirUser"),
                issuer=state.get("iss"),
                patient=reference("Patient", state.get("patient")),
                client_address=client_address(self.request),
                token_hash=trail.token_hash(state["access_token"]),
                description=" ".join(
                    part
                    for part in (
                        "to the FHIR proxy;" if proxy else "",
                        "the client reported a refused token" if rejected else "",
                    )
                    if part
                ).rstrip(";")
                or None,
            )
        except AuditUnavailable:
            self._audit_unavailable()
            return
        payload = token_api_payload(state)
        if proxy:  # the proxy routes by issuer, keys its cache by user, links to sign-in
            payload.update(iss=state.get("iss"), user=user.name, login_url=login_url)
        self._json(200, payload)

    def on_finish(self) -> None:
        """Time the answer (``jupyterhub_smart_token_api_request_duration_seconds``)."""
        TOKEN_API_SECONDS.labels(str(self.get_status())).observe(self.request.request_time())
        super().on_finish()

    def _audit_unavailable(self) -> None:
        """503: access nobody could account for is refused (fail closed); the hub serves on."""
        self._json(
            503,
            {
                "error": "audit_unavailable",
                "message": "The hub cannot write its audit trail right now, so it hands out no "
                "token; retry in a moment, and tell the hub's administrators if it lasts.",
            },
        )
