"""Ending a user's EHR grant: the refresh token revoked at the EHR, every credential dropped.

Logout and the automatic logoff (:mod:`.inactivity`) end a grant the same way:
revoke the refresh token where the EHR advertises a ``revocation_endpoint``
(RFC 7009), record the revocation, then store the auth_state without its
credentials (the issuer, fhirUser and patient stay, so the hub can still say
where to sign in again). Dropping the tokens never depends on the EHR's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .sealed import SEALED_KEY

__all__ = ["end_grant", "holds_tokens"]


def holds_tokens(state: object) -> bool:
    """True when an auth_state still holds an access or refresh token."""
    return isinstance(state, Mapping) and bool(
        state.get("access_token") or state.get("refresh_token") or state.get(SEALED_KEY)
    )


async def end_grant(authenticator: Any, user: Any) -> Mapping[str, Any] | None:
    """Revoke the user's refresh token where possible and drop their tokens.

    Returns the auth_state as it was (None when the user has no SMART
    auth_state). The work is the refresher's (:meth:`.refresh.TokenRefresher.end_grant`,
    shared with logout): a failed revocation is an ERROR and a
    ``token-revocation-failed`` event, and the tokens are dropped all the same.
    """
    state = await authenticator.refresher.load(user)
    if not isinstance(state, Mapping) or not state.get("iss"):
        return None
    await authenticator.refresher.end_grant(user, revoke=authenticator.revoke_on_logout)
    return state
