"""``GET /hub/logout``: JupyterHub's logout, plus the EHR grant revoked and tokens dropped.

OAuthenticator's logout ends the JupyterHub session only. A SMART session
also holds a refresh token that could mint EHR access for weeks, so logout
revokes it at the EHR where the EHR advertises a ``revocation_endpoint``,
drops every stored credential, records the logout, and clears the browser's
pending-login binding cookie. Logout always completes, whatever the EHR says.
"""

from __future__ import annotations

from jupyterhub.user import User
from oauthenticator.oauth2 import OAuthLogoutHandler

from .pages import BINDING_COOKIE
from .trail import client_fields

__all__ = ["SMARTLogoutHandler"]


class SMARTLogoutHandler(OAuthLogoutHandler):
    """JupyterHub's logout, plus refresh-token revocation and the binding cookie cleared."""

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
