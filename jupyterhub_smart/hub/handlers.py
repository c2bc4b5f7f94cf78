"""Tornado handlers of the SMART authenticator.

* ``GET /hub/oauth_login``: EHR launch (``iss`` + ``launch``) or standalone launch;
* ``GET /hub/oauth_callback``: the authorization response;
* ``GET /hub/logout``: JupyterHub's logout plus refresh-token revocation;
* ``GET /hub/api/smart/token``: a fresh access token for the caller's notebook;
* ``GET /hub/smart/jwks.json``: the hub's public keys for ``private_key_jwt``
  (in use and published for a rotation).

Errors are written as pages (or JSON) by the handlers themselves instead of
raising ``HTTPError``: tornado's own warning line for a raised error logs the
full request URL, and on the callback that URL carries the authorization code.
Log lines here name the path only.
"""

from __future__ import annotations

import secrets
import traceback
from collections.abc import Mapping
from http.client import responses
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit

import orjson
from jinja2 import ChoiceLoader, Environment, FileSystemLoader
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers import BaseHandler
from jupyterhub.user import User
from jupyterhub.utils import url_path_join
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado import web

from ..smart.authorize import authorization_error, authorization_url, check_response_issuer
from ..smart.errors import SMARTError, UnknownIssuer, safe_text
from ..smart.pkce import code_challenge_s256, new_code_verifier, new_nonce, new_state
from .pending import PendingLogin, PendingLoginError, binding_hash
from .tokenstate import (
    ReauthenticationRequired,
    RefreshRateLimited,
    parse_fingerprint,
    token_api_payload,
)

if TYPE_CHECKING:
    from .authenticator import SMARTAuthenticator

__all__ = [
    "BINDING_COOKIE",
    "SMARTCallbackHandler",
    "SMARTJWKSHandler",
    "SMARTLoginHandler",
    "SMARTLogoutHandler",
    "SMARTTokenAPIHandler",
    "safe_next_url",
]

#: Signed (tornado secure cookie), HttpOnly cookie with a random value binding pending logins to this browser.
BINDING_COOKIE = "jupyterhub-smart-login"
TEMPLATES = Path(__file__).parent / "templates"
_MAX_PARAM = 2048
#: Characters of a refused (attacker-controlled) ``iss`` kept in the audit trail.
_MAX_AUDITED_ISSUER = 256


def safe_next_url(value: str | None) -> str:
    """A same-site absolute path, or "" (an open-redirect guard).

    Refuses anything a browser could read as another host: ``//evil``,
    ``\\\\evil``, ``/\\evil``, ``/%2F%2Fevil`` (decoded once more by some
    proxies), ``https://evil``, control characters.
    """
    if not value or len(value) > _MAX_PARAM:
        return ""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        return ""
    for candidate in (value, unquote(value)):
        normalized = candidate.replace("\\", "/")
        if not normalized.startswith("/") or normalized.startswith("//"):
            return ""
        parts = urlsplit(normalized)
        if parts.scheme or parts.netloc:
            return ""
    return value


def _param_ok(value: str) -> bool:
    return 0 < len(value) <= _MAX_PARAM and all(0x20 < ord(c) < 0x7F for c in value)


class _SMARTMixin:
    """Page rendering and safe failure shared by the browser-facing handlers."""

    request: Any
    settings: dict[str, Any]
    log: Any

    @property
    def smart(self) -> SMARTAuthenticator:
        return self.authenticator  # type: ignore[attr-defined]

    def _smart_env(self) -> Environment:
        env = self.settings.get("_smart_jinja_env")
        if env is None:
            base: Environment = self.settings["jinja2_env"]
            assert base.loader is not None
            env = base.overlay(loader=ChoiceLoader([base.loader, FileSystemLoader(str(TEMPLATES))]))
            self.settings["_smart_jinja_env"] = env
        return env

    async def render_smart(self, name: str, **ns: Any) -> str:
        template_ns: dict[str, Any] = dict(self.template_namespace)  # type: ignore[attr-defined]
        template_ns["xsrf_token"] = self.xsrf_token.decode("ascii")  # type: ignore[attr-defined]
        template_ns.update(ns)
        return await self._smart_env().get_template(name).render_async(**template_ns)

    async def smart_fail(
        self,
        status: int,
        message: str,
        *,
        error: str,
        audit_action: str | None = "login-failed",
        issuer: str | None = None,
        retry_url: str | None = None,
        retry_label: str = "Sign in again",
    ) -> None:
        """Answer an error page; log and audit it without the query string."""
        self.log.warning(
            "SMART %s refused (%d %s): %s",
            self.request.path,
            status,
            error,
            safe_text(message, 400),
        )
        if audit_action:
            try:
                await self.smart.audit_event(
                    audit_action,
                    outcome="failure",
                    description=f"{error}: {safe_text(message, 300)}",
                    issuer=issuer,
                    client_address=self.request.remote_ip,
                    user_agent=(self.request.headers.get("User-Agent") or "")[:200] or None,
                )
            except Exception as exc:  # a failed refusal is still a refusal
                self.log.error("Could not audit a refused sign-in: %s", type(exc).__name__)
        self.set_status(status)  # type: ignore[attr-defined]
        self.set_header("Cache-Control", "no-store")  # type: ignore[attr-defined]
        html = await self.render_smart(
            "smart_error.html",
            status_code=status,
            status_message=responses.get(status, "Error"),
            message=message,
            message_html="",
            extra_error_html="",
            exception=None,
            smart_error=error,
            retry_url=retry_url,
            retry_label=retry_label,
        )
        self.finish(html)  # type: ignore[attr-defined]

    def browser_binding(self, create: bool) -> str | None:
        """This browser's binding value (from its signed cookie), created if asked."""
        raw = self.get_secure_cookie(BINDING_COOKIE, max_age_days=1)  # type: ignore[attr-defined]
        value = raw.decode("ascii", "replace") if raw else None
        if value is None and create:
            value = secrets.token_urlsafe(32)
            self._set_cookie(  # type: ignore[attr-defined]
                BINDING_COOKIE,
                value,
                encrypted=True,  # JupyterHub: "secure" (signed) cookie
                path=self.hub.base_url,  # type: ignore[attr-defined]
                expires_days=1,
            )
        return value


class SMARTLoginHandler(_SMARTMixin, BaseHandler):
    """Start a SMART authorization: EHR launch, standalone launch, or the issuer picker."""

    async def get(self) -> None:
        iss = self.get_argument("iss", None)
        launch = self.get_argument("launch", None)
        next_url = safe_next_url(self.get_argument("next", ""))
        if self.get_argument("next", "") and not next_url:
            self.log.warning("SMART login: ignoring an off-site 'next' parameter")
        if launch is not None and not _param_ok(launch):
            await self.smart_fail(
                400,
                "The EHR sent an unusable 'launch' parameter. Launch the app again from the EHR.",
                error="invalid_launch",
            )
            return
        if iss is None:
            if launch is not None:
                await self.smart_fail(
                    400,
                    "The EHR launch has a 'launch' but no 'iss' parameter, so the hub cannot "
                    "tell which EHR sent it. Check the app's launch URL in the EHR.",
                    error="missing_iss",
                )
                return
            if self.smart.default_issuer:
                iss = self.smart.default_issuer
            else:
                await self._issuer_picker(next_url)
                return
        if not _param_ok(iss):
            await self.smart_fail(
                400, "The 'iss' parameter is not a URL.", error="unknown_issuer", audit_action=None
            )
            return
        try:
            reg = self.smart.registration(iss)  # allow-list: no network request before this
        except UnknownIssuer as exc:
            # The refused iss is recorded: it says which EHR (or which forgery) tried.
            # Attacker-controlled, so clipped and stripped of control characters.
            await self.smart_fail(
                exc.status,
                str(exc),
                error=exc.error,
                audit_action="issuer-refused",
                issuer=safe_text(iss, _MAX_AUDITED_ISSUER),
            )
            return
        try:
            config = await self.smart.discovery.get(reg.issuer)
        except SMARTError as exc:
            await self.smart_fail(exc.status, str(exc), error=exc.error, issuer=reg.issuer)
            return
        scope = self.smart.scope_for(reg, ehr_launch=launch is not None)
        verifier = new_code_verifier()
        nonce = new_nonce() if "openid" in scope else None
        state = new_state()
        binding = self.browser_binding(create=True)
        assert binding is not None
        self.smart.pending.put(
            state,
            PendingLogin(
                issuer=reg.issuer,
                launch=launch,
                code_verifier=verifier,
                nonce=nonce,
                next_url=next_url,
                scope=scope,
                browser=binding_hash(binding),
            ),
        )
        url = authorization_url(
            config,
            client_id=reg.client_id,
            redirect_uri=self.smart.get_callback_url(self),
            scope=" ".join(scope),
            state=state,
            code_challenge=code_challenge_s256(verifier),
            nonce=nonce,
            launch=launch,
            aud=reg.issuer,
        )
        await self.smart.audit_event(
            "launch-received",
            description="EHR launch" if launch else "standalone launch",
            issuer=reg.issuer,
            scopes_requested=list(scope),
            client_address=self.request.remote_ip,
            user_agent=(self.request.headers.get("User-Agent") or "")[:200] or None,
        )
        self.log.info(
            "SMART %s launch: redirecting to %s",
            "EHR" if launch else "standalone",
            config.authorization_endpoint,
        )
        self.set_header("Cache-Control", "no-store")
        self.redirect(url)

    async def _issuer_picker(self, next_url: str) -> None:
        base = url_path_join(self.hub.base_url, "oauth_login")
        issuers = [
            {
                "label": issuer,
                "url": f"{base}?{urlencode({'iss': issuer, **({'next': next_url} if next_url else {})})}",
            }
            for issuer in self.smart.policy.issuers
        ]
        if not issuers:
            await self.smart_fail(
                503,
                "This hub is not registered with any EHR yet (SMARTAuthenticator.issuers is "
                "empty); ask its administrators.",
                error="no_issuers",
                audit_action=None,
            )
            return
        self.finish(await self.render_smart("smart_issuers.html", smart_issuers=issuers))


class SMARTCallbackHandler(_SMARTMixin, BaseHandler):
    """The authorization response: state, errors, RFC 9207 iss, then the login pipeline."""

    async def get(self) -> None:
        login_url = url_path_join(self.hub.base_url, "oauth_login")
        state = self.get_argument("state", None)
        if not state:
            await self.smart_fail(
                400,
                "The EHR's answer has no 'state', so the hub cannot match it to a sign-in. "
                "Launch the app again from the EHR.",
                error="missing_state",
                retry_url=login_url,
            )
            return
        try:
            pending = self.smart.pending.take(state, self.browser_binding(create=False))
        except PendingLoginError as exc:
            await self.smart_fail(400, str(exc), error="invalid_state", retry_url=login_url)
            return
        error = self.get_argument("error", None)
        if error:
            exc_ = authorization_error(error, self.get_argument("error_description", None))
            await self.smart_fail(
                exc_.status, str(exc_), error=exc_.error, issuer=pending.issuer, retry_url=login_url
            )
            return
        try:
            config = await self.smart.discovery.get(pending.issuer)
            check_response_issuer(config, self.get_argument("iss", None))
        except SMARTError as exc:
            await self.smart_fail(exc.status, str(exc), error=exc.error, issuer=pending.issuer)
            return
        code = self.get_argument("code", None)
        if not code or len(code) > 4096:
            await self.smart_fail(
                400,
                "The EHR's answer has no authorization code. Launch the app again from the EHR.",
                error="missing_code",
                issuer=pending.issuer,
                retry_url=login_url,
            )
            return
        try:
            user = await self.login_user({"pending": pending, "code": code, "config": config})
        except SMARTError as exc:
            await self.smart_fail(
                exc.status, str(exc), error=exc.error, issuer=pending.issuer, retry_url=login_url
            )
            return
        except Exception as exc:
            from ..audit import AuditUnavailable

            if isinstance(exc, AuditUnavailable):
                await self.smart_fail(
                    503,
                    "The hub cannot write its audit trail right now, so it cannot sign you in. "
                    "Try again in a moment.",
                    error="audit_unavailable",
                    audit_action=None,
                )
                return
            if isinstance(exc, web.HTTPError):  # e.g. a hook refusing the user
                await self.smart_fail(
                    exc.status_code,
                    exc.log_message or responses.get(exc.status_code, "Error"),
                    error="refused",
                    issuer=pending.issuer,
                )
                return
            # Not raised on: tornado would log the request URL, code included. The
            # traceback is logged without the exception's message (it could quote a token).
            self.log.error(
                "SMART sign-in failed unexpectedly (%s); traceback:\n%s",
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            await self.smart_fail(
                500,
                "The hub failed while signing you in; try again, and tell the hub's "
                "administrators if it keeps happening.",
                error="internal_error",
                issuer=pending.issuer,
                retry_url=login_url,
            )
            return
        if user is None:
            await self.smart_fail(
                403,
                self.authenticator.custom_403_message
                or "You are not allowed to use this hub; ask its administrators.",
                error="not_allowed",
                audit_action=None,  # recorded by get_authenticated_user
                issuer=pending.issuer,
            )
            return
        self.set_header("Cache-Control", "no-store")
        self.redirect(pending.next_url or self.get_next_url(user))

    def append_query_parameters(self, url: str, exclude: Any = None) -> str:
        """Never carry the callback's code/state into the next URL."""
        return url


class SMARTLogoutHandler(OAuthLogoutHandler):
    """JupyterHub's logout, plus refresh-token revocation and the binding cookie cleared."""

    async def default_handle_logout(self) -> None:
        user = self.current_user
        if isinstance(user, User):
            try:
                await self.authenticator.revoke_and_forget(user)
            except Exception as exc:  # logout must always work
                self.log.error(
                    "Revocation at logout failed for %s: %s", user.name, type(exc).__name__
                )
            try:
                await self.authenticator.audit_event(
                    "logout",
                    username=user.name,
                    client_address=self.request.remote_ip,
                )
            except Exception as exc:
                self.log.error(
                    "Could not audit the logout of %s: %s", user.name, type(exc).__name__
                )
        await super().default_handle_logout()

    async def handle_logout(self) -> None:
        await super().handle_logout()
        self.clear_cookie(BINDING_COOKIE, path=self.hub.base_url)


class SMARTTokenAPIHandler(APIHandler):
    """``GET /hub/api/smart/token``: a fresh SMART access token for the caller.

    Any API token of the user works (the single-user server's own, or one made
    on the token page), because it already proves to be that user; service
    tokens and other users are refused. The refresh token never leaves the hub.

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

    async def get(self) -> None:
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
        asked = self.get_argument("user", None)
        if asked is not None and asked != user.name:
            self.log.warning("Token API: %s asked for another user's token", user.name)
            self._json(
                403,
                {"error": "forbidden", "message": "A user can only get their own SMART token."},
            )
            return
        rejected, problem = self._rejected_argument()
        if problem is not None:
            # The value is not logged: a buggy client might have sent the token itself.
            self.log.warning("Token API: %s sent a malformed 'rejected' parameter", user.name)
            self._json(400, {"error": "invalid_request", "message": problem})
            return
        from ..audit import AuditUnavailable

        authenticator: SMARTAuthenticator = self.authenticator
        login_url = self._login_url()
        try:
            state = await authenticator.fresh_auth_state(
                user, min_validity=authenticator.refresh_leeway, rejected=rejected
            )
        except ReauthenticationRequired as exc:
            if not exc.recorded:  # else the refresh that found out recorded it, with why
                await authenticator.audit_event(
                    "reauthentication-required",
                    outcome="failure",
                    description=str(exc),
                    username=user.name,
                    client_address=self.request.remote_ip,
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
            await authenticator.audit_event(
                "token-issued",
                username=user.name,
                fhir_user=state.get("fhirUser"),
                issuer=state.get("iss"),
                patient=f"Patient/{state['patient']}" if state.get("patient") else None,
                client_address=self.request.remote_ip,
                token_hash=authenticator.token_hash(state["access_token"]),
                description="the client reported a refused token" if rejected else None,
            )
        except AuditUnavailable:
            self._audit_unavailable()
            return
        self._json(200, token_api_payload(state))

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


class SMARTJWKSHandler(BaseHandler):
    """``GET /hub/smart/jwks.json``: public keys for ``private_key_jwt`` (register its URL).

    The keys signing now, then those of ``published_jwks`` (a successor published
    before the switch, a predecessor kept after it), checked once at start-up.
    """

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(orjson.dumps(self.authenticator.public_jwks()))
