"""What the browser-facing SMART handlers share: pages, safe failure, the binding cookie.

Errors are written as pages by the handlers themselves instead of raising
``HTTPError``: tornado's own warning line for a raised error logs the full
request URL, and on the callback that URL carries the authorization code.
Log lines here name the path only.
"""

from __future__ import annotations

import secrets
from http.client import responses
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jinja2 import ChoiceLoader, Environment, FileSystemLoader
from jupyterhub.handlers import BaseHandler

from ..smart.errors import safe_text

__all__ = ["BINDING_COOKIE", "MAX_PARAM", "SMARTPageHandler", "param_ok", "safe_next_url"]

#: Signed (tornado secure cookie), HttpOnly cookie with a random value binding pending logins to this browser.
BINDING_COOKIE = "jupyterhub-smart-login"
TEMPLATES = Path(__file__).parent / "templates"
#: Longest query parameter (``iss``, ``launch``, ``next``) the handlers accept.
MAX_PARAM = 2048


def safe_next_url(value: str | None) -> str:
    """A same-site absolute path, or "" (an open-redirect guard).

    Refuses anything a browser could read as another host: ``//evil``,
    ``\\\\evil``, ``/\\evil``, ``/%2F%2Fevil`` (decoded once more by some
    proxies), ``https://evil``, control characters.
    """
    if not value or len(value) > MAX_PARAM:
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


def param_ok(value: str) -> bool:
    """A non-empty, bounded query parameter of printable ASCII without spaces."""
    return 0 < len(value) <= MAX_PARAM and all(0x20 < ord(c) < 0x7F for c in value)


class SMARTPageHandler(BaseHandler):
    """Page rendering and safe failure shared by the login and callback handlers."""

    def _smart_env(self) -> Environment:
        env = self.settings.get("_smart_jinja_env")
        if env is None:
            base: Environment = self.settings["jinja2_env"]
            assert base.loader is not None
            env = base.overlay(loader=ChoiceLoader([base.loader, FileSystemLoader(str(TEMPLATES))]))
            self.settings["_smart_jinja_env"] = env
        return env

    async def render_smart(self, name: str, **ns: Any) -> str:
        """Render one of this package's templates inside JupyterHub's page layout."""
        template_ns: dict[str, Any] = dict(self.template_namespace)
        template_ns["xsrf_token"] = self.xsrf_token.decode("ascii")
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
                await self.authenticator.trail.unauthenticated(
                    audit_action,
                    self.request,
                    outcome="failure",
                    description=f"{error}: {safe_text(message, 300)}",
                    issuer=issuer,
                )
            except Exception as exc:  # a failed refusal is still a refusal
                self.log.error("Could not audit a refused sign-in: %s", type(exc).__name__)
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
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
        self.finish(html)

    def browser_binding(self, create: bool) -> str | None:
        """This browser's binding value (from its signed cookie), created if asked."""
        raw = self.get_secure_cookie(BINDING_COOKIE, max_age_days=1)
        value = raw.decode("ascii", "replace") if raw else None
        if value is None and create:
            value = secrets.token_urlsafe(32)
            self._set_cookie(
                BINDING_COOKIE,
                value,
                encrypted=True,  # JupyterHub: "secure" (signed) cookie
                path=self.hub.base_url,
                expires_days=1,
            )
        return value
