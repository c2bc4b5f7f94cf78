"""Sign-in handlers: ``GET /hub/oauth_login`` and ``GET /hub/oauth_callback``.

* ``/hub/oauth_login`` starts an EHR launch (``iss`` + ``launch``) or a
  standalone launch (``default_issuer``, or a page to pick an issuer): the
  ``iss`` is checked against the allow-list before any network request, and a
  pending-login record bound to this browser remembers the PKCE verifier and
  nonce;
* ``/hub/oauth_callback`` matches the authorization response to that record,
  checks the RFC 9207 ``iss``, and hands the code to JupyterHub's login
  pipeline (the authenticator's ``authenticate``).
"""

from __future__ import annotations

import traceback
from http.client import responses
from typing import Any
from urllib.parse import urlencode

from jupyterhub.utils import url_path_join
from tornado import web

from ..audit import AuditUnavailable
from ..smart.authorize import authorization_error, authorization_url, check_response_issuer
from ..smart.errors import SMARTError, UnknownIssuer, safe_text
from ..smart.pkce import code_challenge_s256, new_code_verifier, new_nonce, new_state
from .clients import client_address
from .errors import PendingLoginError, PendingLoginsFull
from .metrics import LOGINS, login_outcome
from .pages import SMARTPageHandler, param_ok, safe_next_url
from .pending import PendingLogin, binding_hash

__all__ = ["SMARTCallbackHandler", "SMARTLoginHandler"]

#: Characters of a refused (attacker-controlled) ``iss`` kept in the audit trail.
_MAX_AUDITED_ISSUER = 256


class SMARTLoginHandler(SMARTPageHandler):
    """Start a SMART authorization: EHR launch, standalone launch, or the issuer picker."""

    async def get(self) -> None:
        iss = self.get_argument("iss", None)
        launch = self.get_argument("launch", None)
        next_url = safe_next_url(self.get_argument("next", ""))
        if self.get_argument("next", "") and not next_url:
            self.log.warning("SMART login: ignoring an off-site 'next' parameter")
        if launch is not None and not param_ok(launch):
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
            if self.authenticator.default_issuer:
                iss = self.authenticator.default_issuer
            else:
                await self._issuer_picker(next_url)
                return
        if not param_ok(iss):
            await self.smart_fail(
                400, "The 'iss' parameter is not a URL.", error="unknown_issuer", audit_action=None
            )
            return
        try:
            reg = self.authenticator.ehr.registration(
                iss
            )  # allow-list: no network request before this
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
            config = await self.authenticator.ehr.discovery.get(reg.issuer)
        except SMARTError as exc:
            await self.smart_fail(exc.status, str(exc), error=exc.error, issuer=reg.issuer)
            return
        scope = self.authenticator.scope_for(reg, ehr_launch=launch is not None)
        verifier = new_code_verifier()
        nonce = new_nonce() if "openid" in scope else None
        state = new_state()
        binding = self.browser_binding(create=True)
        assert binding is not None
        client = client_address(self.request)
        try:
            self.authenticator.pending.put(
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
                client,
            )
        except PendingLoginsFull as exc:
            self.set_header("Retry-After", str(exc.retry_after))
            await self.smart_fail(exc.status, str(exc), error=exc.error, issuer=reg.issuer)
            return
        url = authorization_url(
            config,
            client_id=reg.client_id,
            redirect_uri=self.authenticator.get_callback_url(self),
            scope=" ".join(scope),
            state=state,
            code_challenge=code_challenge_s256(verifier),
            nonce=nonce,
            launch=launch,
            aud=reg.issuer,
        )
        await self.authenticator.trail.unauthenticated(
            "launch-received",
            self.request,
            description="EHR launch" if launch else "standalone launch",
            issuer=reg.issuer,
            scopes_requested=list(scope),
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
            for issuer in self.authenticator.ehr.policy.issuers
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


class SMARTCallbackHandler(SMARTPageHandler):
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
            pending = self.authenticator.pending.take(state, self.browser_binding(create=False))
        except PendingLoginError as exc:
            await self.smart_fail(exc.status, str(exc), error=exc.error, retry_url=login_url)
            return
        error = self.get_argument("error", None)
        if error:
            exc_ = authorization_error(error, self.get_argument("error_description", None))
            await self.smart_fail(
                exc_.status, str(exc_), error=exc_.error, issuer=pending.issuer, retry_url=login_url
            )
            return
        try:
            config = await self.authenticator.ehr.discovery.get(pending.issuer)
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
        except AuditUnavailable:
            await self.smart_fail(
                503,
                "The hub cannot write its audit trail right now, so it cannot sign you in. "
                "Try again in a moment.",
                error="audit_unavailable",
                audit_action=None,
            )
            return
        except Exception as exc:
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

    def on_finish(self) -> None:
        """Count the sign-in by outcome (``jupyterhub_smart_logins_total``)."""
        LOGINS.labels(login_outcome(self.get_status())).inc()
        super().on_finish()

    def append_query_parameters(self, url: str, exclude: Any = None) -> str:
        """Never carry the callback's code/state into the next URL."""
        return url
