"""Automatic logoff (HIPAA 164.312(a)(2)(iii)): an idle user's EHR grant ends on its own.

Activity is what JupyterHub already records in ``User.last_activity``
(browser requests to the hub, requests with the user's personal API tokens,
the activity reports of the user's servers), plus token API calls, which the
token API records there itself: JupyterHub deliberately does not count
requests made with a server's own API token, yet a kernel asking for EHR
tokens is the user's analysis at work. A user who signed in and has not made
a request yet counts from the sign-in.

A sweep every ``interval`` seconds finds users whose last activity is older
than ``timeout`` and who still hold EHR tokens, and for each one:

* revokes the refresh token at the EHR and drops the tokens (:func:`.grants.end_grant`):
  the next token API call answers ``reauthentication_required``;
* ends every browser session of the user at the hub (a new cookie id, and the
  OAuth tokens issued within browser sessions deleted): the next visit signs
  in again;
* records ``automatic-logoff`` in the audit trail.

Running servers are left alone: what they can still reach without the hub is
the user's own files, not the EHR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from jupyterhub import orm
from jupyterhub.utils import new_token

from .grants import end_grant, holds_tokens

__all__ = ["InactivityLogoff", "record_activity", "sweep_interval"]


def sweep_interval(timeout: float) -> float:
    """Seconds between sweeps: a tenth of the timeout, between 1 s and 30 s."""
    return min(max(timeout / 10, 1.0), 30.0)


def record_activity(handler: Any, user: Any) -> None:
    """Count a request of the user's notebook as the user's activity.

    JupyterHub does not count requests made with a server's own API token;
    the token API and the audit reports count them, since a kernel fetching
    EHR data is the user's analysis at work. ``activity_resolution`` bounds
    the database writes as for every other request.
    """
    if handler._record_activity(user.orm_user):
        handler.db.commit()


def _utc_naive(epoch: float) -> datetime:
    """JupyterHub stores naive UTC datetimes."""
    return datetime.fromtimestamp(epoch, timezone.utc).replace(tzinfo=None)


class InactivityLogoff:
    """The sweep that ends idle users' EHR grants (module docstring)."""

    def __init__(self, authenticator: Any, timeout: float, log: logging.Logger) -> None:
        self.authenticator = authenticator
        self.timeout = timeout
        self.interval = sweep_interval(timeout)
        self.log = log
        self._task: asyncio.Task[None] | None = None
        #: user name -> the encrypted auth_state last found without tokens (not decrypted again).
        self._tokenless: dict[str, bytes] = {}

    def start(self, app: Any) -> None:
        """Run the sweep in the background of the hub's event loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(app))

    async def _run(self, app: Any) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep(app)
            except Exception:
                self.log.exception(
                    "Automatic logoff sweep failed; retrying in %.0f s", self.interval
                )

    async def sweep(self, app: Any, now: float | None = None) -> list[str]:
        """End the grants of every user idle for longer than the timeout; their names."""
        now = time.time() if now is None else now
        cutoff = _utc_naive(now - self.timeout)
        db = app.db
        candidates = (
            db.query(orm.User)
            .filter(orm.User.encrypted_auth_state.isnot(None))
            .filter((orm.User.last_activity.is_(None)) | (orm.User.last_activity < cutoff))
            .all()
        )
        ended = []
        for orm_user in candidates:
            if self._tokenless.get(orm_user.name) == orm_user.encrypted_auth_state:
                continue
            user = app.users[orm_user]
            state = await user.get_auth_state()
            if not holds_tokens(state):
                self._tokenless[orm_user.name] = orm_user.encrypted_auth_state
                continue
            assert isinstance(state, Mapping)
            if self._signed_in_since(state, cutoff):
                continue
            await self._log_off(app, user, state)
            ended.append(user.name)
        return ended

    @staticmethod
    def _signed_in_since(state: Mapping[str, Any], cutoff: datetime) -> bool:
        """A sign-in is activity too (the hub may not have seen a request since)."""
        signed_in = state.get("signed_in_at", state.get("issued_at"))
        return isinstance(signed_in, (int, float)) and _utc_naive(float(signed_in)) >= cutoff

    async def _log_off(self, app: Any, user: Any, state: Mapping[str, Any]) -> None:
        last = user.orm_user.last_activity
        idle = (
            f"no activity since {last.isoformat(timespec='seconds')}Z"
            if last is not None
            else "no activity since signing in"
        )
        self.log.warning(
            "Automatic logoff of %s: %s (inactivity_timeout %.0f s)", user.name, idle, self.timeout
        )
        await end_grant(self.authenticator, user)
        self._end_browser_sessions(app.db, user.orm_user)
        await self.authenticator.trail.event(
            "automatic-logoff",
            description=f"{idle}; inactivity_timeout is {self.timeout:.0f} s: EHR tokens "
            "dropped and every browser session at the hub ended",
            username=user.name,
            fhir_user=state.get("fhirUser"),
            issuer=state.get("iss") if isinstance(state.get("iss"), str) else None,
        )

    @staticmethod
    def _end_browser_sessions(db: Any, orm_user: Any) -> None:
        """A new cookie id (every hub cookie of the user stops working) and no session tokens.

        The OAuth tokens JupyterHub issued within a browser session (to the
        user's servers and to services) carry that session's id; JupyterHub's
        own logout deletes them for one session, this does for all. The
        servers' own API tokens have no session and stay.
        """
        orm_user.cookie_id = new_token()
        for token in db.query(orm.APIToken).filter(
            orm.APIToken.user_id == orm_user.id, orm.APIToken.session_id.isnot(None)
        ):
            db.delete(token)
        db.commit()
