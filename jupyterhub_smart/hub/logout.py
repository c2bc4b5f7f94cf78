"""``/hub/logout``: sign-out ends the EHR grant too, and only a same-site POST signs out.

OAuthenticator's logout ends the JupyterHub session only. A SMART session
also holds a refresh token that could mint EHR access for weeks, so
signing out revokes it at the EHR where the EHR advertises a
``revocation_endpoint``, drops every stored credential, records the logout,
and clears the browser's pending-login binding cookie. It always completes,
whatever the EHR says.

JupyterHub signs out on a plain ``GET /hub/logout``, which any other site can
make a signed-in browser send (a link, an image, a redirect): a cross-site
request could end the user's session and their EHR grant while an analysis
runs. Here a GET changes nothing. It shows a page that says what signing out
ends, with a form that POSTs back with JupyterHub's ``_xsrf`` token; JupyterHub
checks that token on every POST (403 without it), and a POST the browser
marks ``Sec-Fetch-Site: cross-site`` is refused as well. JupyterHub's
"Logout" buttons link to ``/hub/logout``, so a user signs out with one more
click. A GET from a browser that is not signed in gets JupyterHub's usual
answer (cookies cleared, on to the login page): there is nothing to end.
"""

from __future__ import annotations

from jupyterhub.user import User
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado import web

from .pages import BINDING_COOKIE, SMARTPageHandler
from .trail import client_fields

__all__ = ["SMARTLogoutHandler"]


class SMARTLogoutHandler(SMARTPageHandler, OAuthLogoutHandler):
    """GET: a sign-out page; POST (with ``_xsrf``): JupyterHub's logout plus revocation."""

    async def get(self) -> None:
        user = self.current_user
        if not isinstance(user, User):
            await super().get()
            return
        self.set_header("Cache-Control", "no-store")
        html = await self.render_smart(
            "smart_logout.html",
            logout_action=self.settings["logout_url"],
            home_url=self.hub.base_url + "home",
        )
        self.finish(html)

    async def post(self) -> None:
        # JupyterHub's prepare() has checked _xsrf already (403 without it).
        if self.request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            self.log.warning("Refused a cross-site sign-out POST to %s", self.request.path)
            raise web.HTTPError(403, "Sign out from this hub's own page.")
        await super().get()

    async def default_handle_logout(self) -> None:
        user = self.current_user
        if isinstance(user, User):
            authenticator = self.authenticator
            try:
                grant = await authenticator.refresher.end_grant(
                    user, revoke=authenticator.revoke_on_logout
                )
            except Exception as exc:  # logout must always work
                self.log.error(
                    "Ending the EHR grant of %s failed: %s", user.name, type(exc).__name__
                )
                grant = "EHR grant NOT revoked (the hub failed while revoking)"
            try:
                await authenticator.trail.event(
                    "logout",
                    username=user.name,
                    description=f"JupyterHub session ended; {grant}",
                    **client_fields(self.request),
                )
            except Exception as exc:
                self.log.error(
                    "Could not audit the logout of %s: %s", user.name, type(exc).__name__
                )
        await super().default_handle_logout()

    async def handle_logout(self) -> None:
        await super().handle_logout()
        self.clear_cookie(BINDING_COOKIE, path=self.hub.base_url)
