"""At start-up, end the EHR grants of users the hub's policy no longer lets in.

An admin blocks a user (``blocked_users``) or narrows the allow rules, and
restarts the hub. JupyterHub then takes the blocked users' roles away, so
their API tokens no longer reach the token API at all, and their stored EHR
grants would stay alive at the EHR until someone noticed. So once the hub has
loaded its users, every user who still holds EHR tokens is checked against
the policy (:meth:`.SMARTAuthenticator.access_withdrawn`, the same check the
token API and the audit endpoint make on every call), and for each one
refused the grant is revoked at the EHR, the tokens are dropped and
``access-withdrawn`` is recorded (:meth:`.SMARTAuthenticator.withdraw_access`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyterhub import orm

__all__ = ["withdraw_at_start_up"]


async def withdraw_at_start_up(authenticator: Any, app: Any) -> list[str]:
    """Withdraw the EHR access of every refused user holding tokens; their names."""
    ended = []
    candidates = app.db.query(orm.User).filter(orm.User.encrypted_auth_state.isnot(None)).all()
    for orm_user in candidates:
        user = app.users[orm_user]
        try:
            reason = await authenticator.access_withdrawn(user)
            if reason is not None and await authenticator.withdraw_access(user, reason):
                ended.append(user.name)
        except Exception:  # one user's failure must not spare the others
            authenticator.log.exception("Could not withdraw the EHR access of %s", user.name)
        await asyncio.sleep(0)  # let the hub serve meanwhile
    if ended:
        authenticator.log.warning(
            "EHR access withdrawn at start-up from %d user(s) the hub no longer lets in: %s",
            len(ended),
            ", ".join(ended),
        )
    return ended
