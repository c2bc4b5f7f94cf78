"""The EHR token lifecycle after login: expiry, refresh, forced refresh, removed EHRs.

:class:`TokenRefresher` answers the two callers that need a valid access
token, JupyterHub's ``refresh_user`` and the token API, with one policy:

* expiry decides (no userinfo probe): a token is refreshed ``leeway`` seconds
  before it expires, at most once per user at a time (the two callers share
  one single flight);
* a token the FHIR server refused (the notebook sends its SHA-256) is
  refreshed at once, at most once per user per ``forced_interval``
  (:class:`ForcedRefreshLimiter`);
* an EHR outage never signs a user out (the stored tokens are kept for a
  retry); ``invalid_grant`` and friends do (the grant is over);
* after a failed refresh the EHR is not asked again until a back-off period
  has passed (:mod:`.backoff`): callers get the still-valid token, or 503 with
  ``Retry-After``, and each period is one audit record with a count;
* a user whose EHR the admin removed gets no token any more, and that is
  recorded once per user and issuer;
* the refresh request runs in its own task with its own deadline
  (``token_timeout``, longer than a caller waits): an EHR that rotates
  refresh tokens spends the old one when it answers, so an answer the hub gave
  up on would leave only a spent refresh token. A caller waits at most
  ``wait`` seconds, then gets the still-valid token or 503 with
  ``Retry-After``; the refresh goes on, stores what the EHR answers, and
  callers arriving meanwhile join it;
* a hub told to stop (SIGTERM) lets a refresh in flight finish for up to
  ``shutdown_grace`` seconds and stores its answer (:mod:`.shutdown`).

Every refresh is persisted at once and recorded in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..audit import AuditUnavailable
from ..smart.errors import SMARTError, TokenEndpointError
from ..smart.fingerprint import fingerprint_matches
from ..smart.singleflight import SingleFlight
from ..smart.tokens import refresh_access_token, revoke_token
from .backoff import BackoffPeriod, RefreshBackoff, is_outage
from .ehr import EHRConnections
from .errors import EHRUnavailable, ReauthenticationRequired, RefreshRateLimited
from .metrics import REFRESHES
from .sealed import SEALED_KEY, RefreshTokenSeal, SealBroken
from .shutdown import FinishBeforeExit
from .spill import TokenSpill
from .tokenstate import AuthStateCache, expires_within, with_refreshed, without_tokens
from .trail import HubTrail, reference
from .unsaved import UnsavedTokens

__all__ = ["ForcedRefresh", "ForcedRefreshLimiter", "TokenRefresher"]

#: OAuth errors of a refresh that mean the grant is over (sign in again), not an outage.
GRANT_ENDED = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
#: Seconds a caller told "refresh still running" waits before asking again (at most).
IN_FLIGHT_RETRY_AFTER = 5.0


@dataclass
class ForcedRefresh:
    """The last forced refresh of one user: when, for which refused token, and how it ended."""

    at: float
    fingerprint: str
    failure: SMARTError | None = None


class ForcedRefreshLimiter:
    """At most one forced refresh per user per interval, remembered in memory.

    A notebook that reports a refused token makes the hub call the EHR's token
    endpoint at once. Concurrent reports share one refresh (the single flight);
    this bounds what a buggy or hostile client can do *after* it: report the
    new token refused too, again and again. Within the interval the hub does
    not call the EHR for that user; it answers from what the last forced
    refresh taught it (``reauthentication_required`` stays so) or 429.
    """

    def __init__(self, max_users: int = 10000) -> None:
        self._last: OrderedDict[str, ForcedRefresh] = OrderedDict()
        self._max_users = max_users

    def recent(self, user: str, interval: float, now: float | None = None) -> ForcedRefresh | None:
        """The user's last forced refresh if it began less than ``interval`` s ago."""
        last = self._last.get(user)
        now = time.monotonic() if now is None else now
        if last is None or now - last.at >= interval:
            return None
        return last

    def started(self, user: str, fingerprint: str, now: float | None = None) -> None:
        """Note a forced refresh of ``user`` for the refused token ``fingerprint``."""
        self._last[user] = ForcedRefresh(time.monotonic() if now is None else now, fingerprint)
        self._last.move_to_end(user)
        while len(self._last) > self._max_users:
            self._last.popitem(last=False)

    def failed(self, user: str, fingerprint: str, failure: SMARTError) -> None:
        """Note how the forced refresh for ``fingerprint`` failed (answers within the interval)."""
        last = self._last.get(user)
        if last is not None and last.fingerprint == fingerprint:
            last.failure = failure


class TokenRefresher:
    """Valid access tokens for JupyterHub's refresh_user and the token API (module docstring)."""

    def __init__(
        self,
        ehr: EHRConnections,
        trail: HubTrail,
        *,
        leeway: float,
        forced_interval: float,
        log: logging.Logger,
        seal: RefreshTokenSeal | None = None,
        backoff: RefreshBackoff | None = None,
        refresh_timeout: float | None = None,
        wait: float | None = None,
        spill: TokenSpill | None = None,
        shutdown_grace: float = 20.0,
    ) -> None:
        self.ehr = ehr
        #: Seconds a refresh in flight may go on once the hub is told to stop (:mod:`.shutdown`).
        self.shutdown_grace = shutdown_grace
        #: Seconds the refresh request itself waits for the EHR (default: the HTTP timeout).
        self.refresh_timeout = ehr.timeout if refresh_timeout is None else refresh_timeout
        #: Seconds a caller waits for a refresh in flight (default: no more than it runs).
        self.wait = self.refresh_timeout if wait is None else wait
        #: Holds refreshes back after a failure, per issuer (outage) or per user there.
        self.backoff = backoff or RefreshBackoff(5.0, 300.0)
        self._reporting: set[asyncio.Task[None]] = set()
        #: Seals the refresh token inside auth_state (None: auth_state is not kept).
        self.seal = seal
        self.trail = trail
        self.leeway = leeway
        self.forced_interval = forced_interval
        self.log = log
        self.flight: SingleFlight[dict[str, Any]] = SingleFlight()
        #: Decrypted auth_state reused while its ciphertext is unchanged (token API speed).
        self.auth_states = AuthStateCache(self.open_state)
        self.forced = ForcedRefreshLimiter()
        # (username, issuer) pairs whose "EHR no longer configured" is on the audit trail
        # already: refresh_user and the token API both find out, and JupyterHub 5 runs
        # the first before the second, so each records through _removed_issuer.
        self._removed_issuer_noted: set[tuple[str, str]] = set()
        # Held while a user's stored tokens change hands: a refresh storing its result, a
        # logout dropping them. A refresh that finds its refresh token gone when it gets
        # the lock lost the race to a logout, and stores nothing.
        self._storing: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Refreshed tokens the database did not take (an outage): used and retried (:mod:`.unsaved`).
        self.unsaved = UnsavedTokens(
            self.store, self._storing.__getitem__, log, spill=spill, revoke=self._revoke_dropped
        )

    async def refresh_user(self, user: Any) -> bool | dict[str, Any]:
        """JupyterHub's refresh_user answer: True, ``{"auth_state": ...}`` or False.

        True: nothing to do (or the EHR is unreachable: keep the state and retry
        later); a dict: the refreshed auth_state; False: the user must sign in
        again (refresh refused with invalid_grant, no refresh token left, or
        their EHR is no longer configured).
        """
        name = user.name  # read before a refresh whose failed write expires the user's row
        state = await self.load(user)
        if not isinstance(state, Mapping) or not state.get("access_token"):
            return True
        if await self._removed_issuer(user, state):
            return False
        if not expires_within(state, self.leeway):
            return True
        try:
            fresh = await self.fresh_auth_state(user, min_validity=self.leeway)
        except ReauthenticationRequired:
            return False
        except SMARTError:
            return True  # logged in fresh_auth_state; the token API reports it
        except AuditUnavailable:
            # The refreshed tokens are stored (the EHR rotated the refresh token: dropping
            # them would end the session); only the record is held back until the disk
            # accepts it. Nothing is handed out here, and the token API refuses (503)
            # while the trail cannot record the hand-out.
            self.log.error(
                "Refreshed the SMART tokens of %s but the audit trail is unavailable", user.name
            )
            return True
        if self.unsaved.get(name) is not None:
            return True  # the database is not taking writes: .unsaved stores it when it does
        # JupyterHub stores what this returns: sealed, like every write of auth_state.
        return {"auth_state": self.seal.seal(fresh) if self.seal is not None else fresh}

    async def fresh_auth_state(
        self, user: Any, *, min_validity: float, rejected: str | None = None
    ) -> dict[str, Any]:
        """The user's auth_state with an access token valid for ``min_validity`` s.

        Refreshes when needed, at most once per user at a time (refresh_user
        and the token API share the flight). ``rejected``: the SHA-256 of an
        access token the FHIR server refused; when it is the current token, the
        refresh is forced (rate-limited per user, see ``forced_interval``).
        Raises ReauthenticationRequired when the user must sign in again,
        RefreshRateLimited, or another SMARTError when the EHR is unavailable
        and the current token does not last long enough (or was refused).
        """
        state = self.unsaved.get(user.name) or await self.auth_states.get(user)
        if not isinstance(state, Mapping) or not state.get("access_token"):
            raise ReauthenticationRequired("No SMART tokens for this user: sign in again.")
        if await self._removed_issuer(user, state):
            # Its tokens are not handed out any more, even while they are valid (JupyterHub
            # keeps token-authenticated requests of a user whose refresh_user said False,
            # unless auth_refresh_strict).
            raise ReauthenticationRequired(
                "The EHR you signed in with is no longer configured on this hub: sign in again.",
                recorded=True,
            )
        forced = rejected is not None and fingerprint_matches(state["access_token"], rejected)
        if not forced and not expires_within(state, min_validity):
            return dict(state)
        if forced and not self.flight.in_flight(user.name):
            assert rejected is not None
            last = self.forced.recent(user.name, self.forced_interval)
            if last is not None:
                return await self._forced_too_soon(user, rejected, last)
            self.forced.started(user.name, rejected)
        try:
            if not self.flight.in_flight(user.name):
                self._hold_back(user, state)
            # Registered now, not when wait_for's task first runs: a report of the same
            # refused token arriving meanwhile must join this flight, not be rate-limited.
            flight = self.flight.start(
                user.name, lambda: self._refresh_task(user, rejected if forced else None)
            )
            try:
                # The flight is shielded: giving up here leaves the refresh running.
                return dict(await asyncio.wait_for(asyncio.shield(flight), self.wait))
            except asyncio.TimeoutError:
                raise EHRUnavailable(
                    f"The EHR has not answered the hub's refresh within {self.wait:g} s; the "
                    "refresh goes on and its tokens are kept when the EHR answers.",
                    retry_after=min(IN_FLIGHT_RETRY_AFTER, self.wait),
                ) from None
        except SMARTError as exc:
            if forced:
                assert rejected is not None
                self.forced.failed(user.name, rejected, exc)
            if forced or isinstance(exc, ReauthenticationRequired):
                raise  # a refused token is never handed out again
            current = await self.load(user)
            if isinstance(current, Mapping) and not expires_within(current, 0):
                return dict(current)  # still valid, just short: better than nothing
            raise

    def _hold_back(self, user: Any, state: Mapping[str, Any]) -> None:
        """Raise EHRUnavailable while the user's EHR, or this user there, is in back-off."""
        iss = state.get("iss")
        if not isinstance(iss, str):
            return
        for key in (iss, _user_key(iss, user.name)):
            period = self.backoff.waiting(key)
            if period is not None:
                retry_after = self.backoff.retry_after(period)
                raise EHRUnavailable(
                    f"A refresh at the EHR failed moments ago ({period.reason}); the hub asks "
                    f"the EHR again in {retry_after} s.",
                    retry_after=retry_after,
                )

    def _backed_off(self, iss: str, user: Any, exc: SMARTError) -> BackoffPeriod:
        """Start the next back-off period after ``exc``; the count of the last one is recorded."""
        outage = is_outage(exc)
        key = iss if outage else _user_key(iss, user.name)
        period, previous = self.backoff.failed(key, str(exc))
        username = None if outage else user.name
        self._record_later(previous, iss, username, delay=0)
        self._record_later(period, iss, username, delay=period.delay)
        return period

    def _backoff_ended(self, iss: str, user: Any) -> None:
        """A refresh at ``iss`` worked: no more back-off there; the counts are recorded."""
        self._record_later(self.backoff.succeeded(iss), iss, None, delay=0)
        mine = self.backoff.succeeded(_user_key(iss, user.name))
        self._record_later(mine, iss, user.name, delay=0)

    def _record_later(
        self, period: BackoffPeriod | None, iss: str, username: str | None, *, delay: float
    ) -> None:
        """Record the calls ``period`` turned away once it ends (nothing if there were none)."""
        if period is None:
            return
        loop = asyncio.get_running_loop()

        def record() -> None:
            task = loop.create_task(self._record_held_back(period, iss, username))
            self._reporting.add(task)
            task.add_done_callback(self._reporting.discard)

        loop.call_later(delay, record)

    async def _record_held_back(
        self, period: BackoffPeriod, iss: str, username: str | None
    ) -> None:
        refused = RefreshBackoff.close(period)
        if not refused:
            return
        await self.trail.event(
            "refresh-failed",
            outcome="failure",
            description=(
                f"back-off of {period.delay:g} s after {period.failures} failed refresh(es) in "
                f"a row ({period.reason}): {refused} request(s) for a fresh token answered "
                "without asking the EHR"
            ),
            username=username,
            issuer=iss,
        )

    async def load(self, user: Any) -> dict[str, Any] | None:
        """The user's auth_state as the hub works on it (refresh token opened, :mod:`.sealed`).

        A seal no key opens (the crypt key was replaced without keeping the old
        one) leaves the state without a refresh token: the user signs in again
        once the access token expires.
        """
        unsaved = self.unsaved.get(user.name)
        if unsaved is not None:
            return unsaved  # newer than the database's (an outage): see .unsaved
        state = await user.get_auth_state()
        if not isinstance(state, Mapping):
            return None
        return self.open_state(user.name, state)

    def open_state(self, name: str, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` with its refresh token opened (see :meth:`load`)."""
        if self.seal is None:
            return dict(state)
        try:
            return self.seal.open(state)
        except SealBroken as exc:
            self.log.error("The refresh token of %s cannot be opened: %s", name, exc)
            return {key: value for key, value in state.items() if key != SEALED_KEY}

    async def store(self, user: Any, state: Mapping[str, Any]) -> None:
        """Save ``state`` with its refresh token sealed (:mod:`.sealed`)."""
        await user.save_auth_state(self.seal.seal(state) if self.seal is not None else dict(state))
        self.unsaved.drop(user.name)

    async def forget_tokens(self, user: Any, state: Mapping[str, Any]) -> None:
        """Store ``state`` without its credentials and drop the user's decrypted copy."""
        async with self._storing[user.name]:
            await self.store(user, without_tokens(state))
            self.auth_states.forget(user.name)

    async def end_grant(self, user: Any, *, revoke: bool) -> str:
        """Revoke the user's refresh token at the EHR (if ``revoke``), then drop the tokens.

        Returns what became of the EHR grant, in words for the logout record: it
        must not say the grant ended when the EHR did not confirm it. A failed
        revocation is an ERROR and a ``token-revocation-failed`` event.
        """
        state = await self.load(user)
        if not isinstance(state, Mapping) or not state.get("iss"):
            return "no EHR grant was held"
        iss = state["iss"]
        refresh_token = state.get("refresh_token")
        if not refresh_token:
            outcome = "no refresh token was held"
        elif not revoke:
            outcome = "EHR grant not revoked (revoke_on_logout is off)"
        elif not self.ehr.configured(iss):
            outcome = "EHR grant not revoked (the EHR is no longer configured)"
        else:
            outcome = await self._revoke(user.name, state, refresh_token)
        await self.forget_tokens(user, state)
        return outcome + "; the hub dropped its EHR tokens"

    async def _revoke_dropped(self, name: str, state: Mapping[str, Any]) -> None:
        """Revoke the refresh token of refreshed tokens dropped unsaved (:mod:`.unsaved`)."""
        refresh_token = state.get("refresh_token")
        if (
            isinstance(refresh_token, str)
            and refresh_token
            and self.ehr.configured(state.get("iss"))
        ):
            await self._revoke(name, state, refresh_token)

    async def _revoke(self, name: str, state: Mapping[str, Any], refresh_token: str) -> str:
        """Revoke ``refresh_token`` at the EHR of ``name``'s ``state``; the outcome in words."""
        iss = state["iss"]
        try:
            config, client = await self.ehr.endpoints(iss)
            revoked = await revoke_token(
                self.ehr.http, config, client, refresh_token, timeout=self.ehr.timeout
            )
        except SMARTError as exc:
            self.log.error("Could not revoke the refresh token of %s at %s: %s", name, iss, exc)
            await self.trail.event(
                "token-revocation-failed",
                outcome="failure",
                description=str(exc),
                username=name,
                fhir_user=state.get("fhirUser"),
                issuer=iss,
            )
            return "EHR grant NOT revoked (the EHR refused or did not answer)"
        if not revoked:
            return "EHR grant not revoked (the EHR offers no revocation endpoint)"
        await self.trail.event(
            "token-revoked", username=name, fhir_user=state.get("fhirUser"), issuer=iss
        )
        return "EHR grant revoked"

    async def _removed_issuer(self, user: Any, state: Mapping[str, Any]) -> bool:
        """True when the user signed in at an EHR the admin has since removed.

        Recorded once per user and issuer, by whichever caller finds out first.
        """
        iss = state.get("iss")
        if self.ehr.configured(iss):
            return False
        self.log.warning("%s signed in at an EHR no longer configured", user.name)
        key = (user.name, iss if isinstance(iss, str) else "")
        if key not in self._removed_issuer_noted:
            self._removed_issuer_noted.add(key)
            await self.trail.event(
                "reauthentication-required",
                outcome="failure",
                description="the EHR this user signed in with is no longer configured on this hub",
                username=user.name,
                fhir_user=state.get("fhirUser"),
                issuer=key[1] or None,
            )
        return True

    async def _forced_too_soon(
        self, user: Any, rejected: str, last: ForcedRefresh
    ) -> dict[str, Any]:
        """A refused token reported within ``forced_interval`` of the last forced refresh."""
        current = await self.auth_states.get(user)
        token = (current or {}).get("access_token")
        if isinstance(token, str) and token and not fingerprint_matches(token, rejected):
            return dict(current or {})  # refreshed meanwhile: the report is about an old token
        if last.fingerprint == rejected and isinstance(last.failure, ReauthenticationRequired):
            raise ReauthenticationRequired(str(last.failure))
        retry_after = self.forced_interval - (time.monotonic() - last.at)
        self.log.warning(
            "Token API: %s reported a refused token again within %.0f s of a forced refresh; "
            "not asking the EHR",
            user.name,
            self.forced_interval,
        )
        if last.fingerprint == rejected and last.failure is not None:
            raise RefreshRateLimited(
                "The hub tried to refresh this refused access token moments ago and the EHR did "
                f"not answer ({last.failure.error}); it tries again in {retry_after:.0f} s.",
                retry_after=retry_after,
            )
        raise RefreshRateLimited(
            "The FHIR server refused the access token the hub refreshed moments ago; the hub "
            f"will not refresh it again for {retry_after:.0f} s. If this keeps happening, the "
            "FHIR server does not accept this EHR session's tokens: tell the hub's administrators.",
            retry_after=retry_after,
        )

    def _refresh_task(self, user: Any, rejected: str | None) -> asyncio.Task[dict[str, Any]]:
        """:meth:`_refresh` in a task that a stopping hub lets finish (:mod:`.shutdown`)."""
        name = user.name

        def putting_off() -> None:
            self.log.warning(
                "Stopping: the refresh of %s's SMART tokens is at the EHR; waiting up to %g s "
                "for its answer so that the rotated refresh token is kept",
                name,
                self.shutdown_grace,
            )

        return FinishBeforeExit(
            self._refresh(user, rejected=rejected),
            grace=self.shutdown_grace,
            on_put_off=putting_off,
            name=f"smart-refresh:{name}",
        )

    async def _refresh(self, user: Any, rejected: str | None = None) -> dict[str, Any]:
        """One refresh for ``user`` (run inside the single flight), persisted at once.

        ``rejected``: forced because the FHIR server refused the token with this
        SHA-256 (refresh even though it has not expired, unless it was replaced).
        """
        # What the database holds now, and the name: after a failed write the session is
        # rolled back, and reading the user's attributes would ask the database again.
        base = getattr(user, "encrypted_auth_state", None)
        name = user.name
        state = dict(await self.load(user) or {})
        token = state.get("access_token")
        refused = (
            isinstance(token, str) and rejected is not None and fingerprint_matches(token, rejected)
        )
        if token and not refused and not expires_within(state, self.leeway):
            return state  # a flight that just finished already refreshed it
        forced = " (forced: the FHIR server refused the access token)" if refused else ""
        refresh_token = state.get("refresh_token")
        iss = state.get("iss")
        if not isinstance(iss, str) or not self.ehr.configured(iss):
            raise ReauthenticationRequired("Your EHR is no longer configured on this hub.")
        if not refresh_token:
            await self._reauthentication_required(
                user, state, "access token expiring and no refresh token" + forced
            )
            raise ReauthenticationRequired(
                "Your EHR session has expired and the EHR gave no refresh token: sign in again.",
                recorded=True,
            )
        try:
            config, client = await self.ehr.endpoints(iss)
            response = await refresh_access_token(
                self.ehr.http,
                config,
                client,
                refresh_token,
                requested_scope=state.get("scope") or None,
                timeout=self.refresh_timeout,
            )
        except asyncio.CancelledError:
            # Only a stopping hub cancels a refresh, once shutdown_grace is over.
            REFRESHES.labels("failed").inc()
            self.log.error(
                "Stopped before the EHR answered the refresh of %s's SMART tokens: if the EHR "
                "rotated the refresh token, %s must sign in again",
                name,
                name,
            )
            await self.trail.event(
                "refresh-failed",
                outcome="failure",
                description=(
                    f"the hub stopped before the EHR answered a refresh{forced} "
                    f"(shutdown_grace {self.shutdown_grace:g} s)"
                ),
                username=name,
                issuer=iss,
            )
            raise
        except SMARTError as exc:
            if isinstance(exc, TokenEndpointError) and exc.oauth_error in GRANT_ENDED:
                REFRESHES.labels("reauthentication_required").inc()
                self.log.warning("Refresh for %s refused by the EHR%s: %s", user.name, forced, exc)
                await self._reauthentication_required(user, state, str(exc) + forced)
                if refused:
                    # The FHIR server refused the token and the EHR the refresh: the grant is
                    # over. Drop the dead tokens so every kernel of the user hears it next time.
                    await self.forget_tokens(user, state)
                raise ReauthenticationRequired(
                    "The EHR no longer accepts this session: sign in again.", recorded=True
                ) from None
            REFRESHES.labels("failed").inc()
            period = self._backed_off(iss, user, exc)
            self.log.error(
                "Refresh for %s failed, keeping the session; asking %s again in %g s: %s",
                user.name,
                "this EHR" if is_outage(exc) else "for this user",
                period.delay,
                exc,
            )
            await self.trail.event(
                "refresh-failed",
                outcome="failure",
                description=f"{exc}{forced}; next attempt in {period.delay:g} s",
                username=user.name,
                issuer=iss,
            )
            raise EHRUnavailable(
                f"{exc} The hub asks the EHR again in {period.delay:g} s.",
                retry_after=period.delay,
            ) from None
        self._backoff_ended(iss, user)
        async with self._storing[user.name]:
            try:
                stored = await self.load(user)
                current = stored.get("refresh_token") if isinstance(stored, Mapping) else None
                if current == refresh_token:
                    state = with_refreshed(state, response)
                    await self.store(user, state)
            except SQLAlchemyError as exc:
                # The EHR may have spent the old refresh token: keep the new ones (.unsaved).
                user.db.rollback()
                state = with_refreshed(state, response)
                self.unsaved.keep(name, user, state, base if isinstance(base, bytes) else None)
                current = refresh_token
                self.log.error(
                    "Refreshed the SMART tokens of %s but the hub database did not take them "
                    "(%s): kept in memory until it does",
                    name,
                    type(exc).__name__,
                )
        if current != refresh_token:  # a logout dropped the tokens, or a new sign-in replaced them
            REFRESHES.labels("discarded").inc()
            return await self._discard_refresh(user, state, response.refresh_token, stored)
        REFRESHES.labels("success").inc()
        await self.trail.event(
            "token-refreshed",
            username=name,
            fhir_user=state.get("fhirUser"),
            issuer=iss,
            patient=reference("Patient", state.get("patient")),
            scopes_granted=state["scope"],
            token_hash=self.trail.token_hash(response.access_token),
            description=forced.strip(" ()") or None,
        )
        self.log.info("Refreshed the SMART access token of %s%s", name, forced)
        return state

    async def _discard_refresh(
        self,
        user: Any,
        state: Mapping[str, Any],
        new_refresh_token: str | None,
        stored: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """A refresh whose tokens were dropped (logout) or replaced (a new sign-in) meanwhile.

        Logout wins: nothing is stored, and a refresh token the EHR minted
        meanwhile is revoked, so the grant the user ended stays ended
        (ReauthenticationRequired, recorded). After a new sign-in its tokens
        stay and are returned.
        """
        self.log.warning(
            "A refresh for %s finished after its tokens changed; discarding it", user.name
        )
        if new_refresh_token and self.ehr.configured(state.get("iss")):
            await self._revoke(user.name, state, new_refresh_token)
        if isinstance(stored, Mapping) and stored.get("access_token"):
            return dict(stored)
        await self._reauthentication_required(user, state, "signed out while a refresh ran")
        raise ReauthenticationRequired("You signed out: sign in again.", recorded=True)

    async def _reauthentication_required(
        self, user: Any, state: Mapping[str, Any], why: str
    ) -> None:
        """Record that ``user`` must sign in again, and why."""
        await self.trail.event(
            "reauthentication-required",
            outcome="failure",
            description=why,
            username=user.name,
            fhir_user=state.get("fhirUser"),
            issuer=state.get("iss"),
        )


def _user_key(iss: str, name: str) -> str:
    """The back-off key of one user at one EHR (a newline is in neither)."""
    return f"{iss}\n{name}"
