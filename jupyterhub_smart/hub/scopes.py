"""The JupyterHub scopes that guard the hub's SMART endpoints.

Any token JupyterHub issues in a user's name authenticates as that user: the
server's own token, a personal token, and also the OAuth token a JupyterHub
service receives when the user signs in to it, or the one another user's
shared server receives when the user opens it. Only the first two may get the
user's EHR access. Two custom scopes (JupyterHub >= 3) draw that line:

* ``custom:smart:token`` for ``GET /hub/api/smart/token``;
* ``custom:smart:audit`` for ``POST /hub/api/smart/audit``.

A third, ``custom:smart:audit-read``, opens the audit page ``/hub/smart/audit``
(who accessed which patient's data) to people who are not hub admins, such as
a privacy officer: no role has it by default; an admin grants it in
``load_roles``. Admins (the ``admin-ui`` scope) see the page without it.

The authenticator defines them and grants them, filtered to the user, to the
``user`` role (so personal tokens, which inherit, have them) and the
``server`` role (so each server's own token has them). An OAuth client (a
service, another user's server) gets them only when it is allowed to request
them (``oauth_client_allowed_scopes``) and the user consents on JupyterHub's
authorization page, which shows the descriptions below.
"""

from __future__ import annotations

from typing import Any

from jupyterhub import orm
from jupyterhub import scopes as jupyterhub_scopes

__all__ = [
    "AUDIT_READ_SCOPE",
    "AUDIT_SCOPE",
    "SMART_SCOPES",
    "TOKEN_SCOPE",
    "define_smart_scopes",
    "grant_to_default_roles",
    "missing_scope_message",
    "register_smart_scopes",
]

TOKEN_SCOPE = "custom:smart:token"  # noqa: S105 (a scope name, not a secret)
AUDIT_SCOPE = "custom:smart:audit"
AUDIT_READ_SCOPE = "custom:smart:audit-read"

#: Definitions as JupyterHub's custom_scopes takes them; the description is the consent text.
SMART_SCOPES: dict[str, dict[str, Any]] = {
    TOKEN_SCOPE: {
        "description": (
            "Get your EHR access token: read, in your name, the patient data your EHR "
            "sign-in granted to this hub."
        ),
    },
    AUDIT_SCOPE: {
        "description": "Report FHIR requests to the hub's audit trail in your name.",
    },
    AUDIT_READ_SCOPE: {
        "description": (
            "Read the hub's audit trail: who accessed which patient's data, when and how."
        ),
    },
}

#: Default roles and what they gain: each holder, for its own user only.
_GRANTS = {
    "user": [f"{TOKEN_SCOPE}!user", f"{AUDIT_SCOPE}!user"],
    "server": [f"{TOKEN_SCOPE}!user", f"{AUDIT_SCOPE}!user"],
}


def define_smart_scopes() -> None:
    """Make the scopes known to JupyterHub (a ValueError if defined differently already)."""
    jupyterhub_scopes.define_custom_scopes(SMART_SCOPES)


def grant_to_default_roles(db: Any) -> list[str]:
    """Add the SMART scopes to the ``user`` and ``server`` roles; the roles changed.

    JupyterHub resets its default roles at every start, so this runs at every
    start too (after the roles are loaded, before any server is spawned).
    """
    changed = []
    for name, grants in _GRANTS.items():
        role = orm.Role.find(db, name)
        if role is None:
            continue
        missing = [scope for scope in grants if scope not in role.scopes]
        if missing:
            role.scopes = [*role.scopes, *missing]
            changed.append(name)
    db.commit()
    return changed


def register_smart_scopes(app: Any) -> None:
    """Define the scopes and grant them to the default roles of a starting JupyterHub app.

    For an authenticator's ``get_handlers(app)``, which JupyterHub calls after
    loading roles and before spawning any server.
    """
    define_smart_scopes()
    changed = grant_to_default_roles(app.db)
    if changed:
        app.log.info("Granted %s to the roles %s", ", ".join(SMART_SCOPES), ", ".join(changed))


def missing_scope_message(scope: str) -> str:
    """The 403 message for a token without ``scope``: what it is and how to grant it."""
    return (
        f"This token lacks the JupyterHub scope {scope}. The user's own server token and "
        "personal API tokens have it; tokens JupyterHub gave to services or to other users' "
        "servers do not, unless the user approved it for them. An admin lets a trusted "
        f"service ask users for it by adding {scope!r} to that service's "
        "oauth_client_allowed_scopes (see docs/security.md)."
    )
