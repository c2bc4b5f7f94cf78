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

from ..smart.errors import SMARTError
from ..smart.tokens import revoke_token
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
    auth_state). A failed revocation is logged and the tokens are dropped all
    the same.
    """
    state = await authenticator.refresher.load(user)
    if not isinstance(state, Mapping) or not state.get("iss"):
        return None
    iss = state["iss"]
    refresh_token = state.get("refresh_token")
    revoked = False
    if authenticator.revoke_on_logout and refresh_token and authenticator.ehr.configured(iss):
        try:
            config, client = await authenticator.ehr.endpoints(iss)
            revoked = await revoke_token(authenticator.ehr.http, config, client, refresh_token)
        except SMARTError as exc:
            authenticator.log.warning(
                "Could not revoke the refresh token of %s: %s", user.name, exc
            )
    if revoked:
        await authenticator.trail.event(
            "token-revoked", username=user.name, fhir_user=state.get("fhirUser"), issuer=iss
        )
    await authenticator.refresher.forget_tokens(user, state)
    return state
