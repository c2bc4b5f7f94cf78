"""Readiness for Kubernetes probes: ``/hub/api/smart/health`` and its admin-only detail.

JupyterHub's own ``/hub/health`` says the process answers. A SMART hub that
answers can still be useless: while the audit log fails closed it signs nobody
in and hands out no token, and until it has fetched the SMART configuration of
at least one configured EHR nobody can sign in. So:

* ``GET /hub/api/smart/health``: no authentication, no details (a probe, or
  anyone, learns only ready or not): 200 ``{"status": "ready"}``, or 503
  ``{"status": "unavailable"}`` while the audit log is failing closed, no
  issuer's discovery has ever succeeded, or the hub database does not answer
  (``SELECT 1``, through :class:`.database.DatabaseHealth`, which records the
  outage in the audit trail);
* ``GET /hub/api/smart/health/detail``: the same status code, with which of
  these holds, per issuer the last discovery error, the audit log's failure
  (errno name) and backlog, and the database error's class; only for holders
  of ``admin:users`` (the hub's admins and the services given the admin role),
  401/403 otherwise.

Discovery normally happens at the first sign-in. A hub nobody has signed in to
yet would never become ready, so a probe that finds no issuer discovered
starts discovery of every configured issuer itself (at most once a second,
whoever sends probes, so the probe URL cannot be used to make the hub flood
its EHRs) and waits for it briefly. Once one issuer has been discovered the
hub stays ready for it: an EHR that goes down later fails sign-ins with a
clear page, not the whole hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from jupyterhub.apihandlers.base import APIHandler

from ..audit import AuditLog
from ..smart.errors import SMARTError
from ..smart.issuers import normalize_issuer
from .metrics import DISCOVERY_FAILURES

__all__ = ["IssuerDiscovery", "Readiness", "health_handlers"]

#: Seconds between two discovery attempts started by probes.
PROBE_DISCOVERY_INTERVAL = 1.0
#: Seconds a probe waits for the discovery it started (Kubernetes' default probe timeout is 1 s).
PROBE_WAIT = 0.5
#: Scope whose holders see the detail.
DETAIL_SCOPE = "admin:users"


@dataclass
class IssuerDiscovery:
    """What the hub knows of one configured issuer's discovery."""

    succeeded_at: float | None = None  # wall clock of the last success
    failed_at: float | None = None
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "discovered": self.succeeded_at is not None,
            "last_success": self.succeeded_at,
            "last_failure": self.failed_at,
            "last_error": self.last_error,
        }


class Readiness:
    """Follows discovery (through the discovery cache's observer) and the audit log."""

    def __init__(
        self,
        issuers: Iterable[str],
        *,
        discover: Callable[[str], Any],
        audit_log: Callable[[], AuditLog | None],
        interval: float = PROBE_DISCOVERY_INTERVAL,
    ) -> None:
        self.issuers = {normalize_issuer(iss): IssuerDiscovery() for iss in issuers}
        self._discover = discover
        self._audit_log = audit_log
        self.interval = interval
        self._probe: asyncio.Task[None] | None = None
        self._probe_started = float("-inf")

    def observe(self, issuer: str, error: SMARTError | None) -> None:
        """The discovery cache's observer: every fetch's end, for readiness and metrics."""
        state = self.issuers.get(issuer)
        if state is None:  # only configured issuers are ever discovered; kept bounded anyway
            return
        if error is None:
            state.succeeded_at = time.time()
        else:
            state.failed_at = time.time()
            state.last_error = str(error)
            DISCOVERY_FAILURES.labels(issuer).inc()

    @property
    def discovered(self) -> bool:
        """True once some configured issuer's discovery has succeeded."""
        return any(state.succeeded_at is not None for state in self.issuers.values())

    async def check(self, *, database_ok: bool = True) -> tuple[bool, dict[str, Any]]:
        """(ready, detail); starts discovery when none has succeeded yet (see module doc).

        ``database_ok``: whether the hub database answered the caller's probe.
        """
        if not self.discovered:
            await self._probe_discovery()
        log = self._audit_log()
        audit_ok = log is None or log.healthy
        reasons = []
        if not audit_ok:
            reasons.append("audit_log_failing")
        if not self.discovered:
            reasons.append("no_issuer_discovered")
        if not database_ok:
            reasons.append("database_unavailable")
        detail: dict[str, Any] = {
            "status": "unavailable" if reasons else "ready",
            "reasons": reasons,
            "audit_log": {
                "opened": log is not None,
                "writable": audit_ok,
                "failure": log.failure if log is not None else None,
                "backlog_events": log.backlog if log is not None else 0,
            },
            "issuers": {iss: state.as_json() for iss, state in self.issuers.items()},
            "database": {"available": database_ok},
        }
        return not reasons, detail

    async def _probe_discovery(self) -> None:
        now = time.monotonic()
        if (self._probe is None or self._probe.done()) and (
            now - self._probe_started >= self.interval
        ):
            self._probe_started = now
            self._probe = asyncio.ensure_future(self._discover_all())
        if self._probe is not None and not self._probe.done():
            await asyncio.wait([self._probe], timeout=PROBE_WAIT)

    async def _discover_all(self) -> None:
        async def one(issuer: str) -> None:
            with contextlib.suppress(SMARTError):  # observed (recorded, counted) by the cache
                await self._discover(issuer)

        await asyncio.gather(*(one(issuer) for issuer in self.issuers))


class SMARTHealthHandler(APIHandler):
    """``GET /hub/api/smart/health``: 200 ready / 503 unavailable, nothing else said."""

    def check_xsrf_cookie(self) -> None:
        """GET only; nothing to protect."""

    async def get(self) -> None:
        ready, _ = await self._check()
        self._answer(ready, {"status": "ready" if ready else "unavailable"})

    async def _check(self) -> tuple[bool, dict[str, Any]]:
        database_ok = await self.authenticator.database_health.probe(self.db)
        return await self.authenticator.readiness.check(database_ok=database_ok)

    def _answer(self, ready: bool, body: dict[str, Any]) -> None:
        self.set_status(200 if ready else 503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(body))


class SMARTHealthDetailHandler(SMARTHealthHandler):
    """``GET /hub/api/smart/health/detail``: why not ready, for the hub's admins."""

    async def get(self) -> None:
        if self.current_user is None:
            self.set_header("WWW-Authenticate", 'token realm="jupyterhub"')
            self.set_status(401)
            self.finish(orjson.dumps({"error": "authentication_required"}))
            return
        if not self.has_scope(DETAIL_SCOPE):
            self.set_status(403)
            self.finish(
                orjson.dumps(
                    {
                        "error": "insufficient_scope",
                        "scope": DETAIL_SCOPE,
                        "message": "The readiness detail is for the hub's administrators.",
                    }
                )
            )
            return
        ready, detail = await self._check()
        detail["database"]["last_error"] = self.authenticator.database_health.last_error
        self._answer(ready, detail)


health_handlers: list[tuple[str, type]] = [
    (r"/api/smart/health", SMARTHealthHandler),
    (r"/api/smart/health/detail", SMARTHealthDetailHandler),
]
