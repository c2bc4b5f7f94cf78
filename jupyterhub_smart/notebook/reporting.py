"""Data-access reports to the hub's audit trail: batched, off the hot path, on by default.

Runs in the user's kernel. ``connect()`` in a single-user server spawned by a
jupyterhub-smart hub (the :class:`~.tokens.HubTokenProvider` path) hands every
FHIR request's *shape* to :class:`HubAuditReporter` without the researcher
asking: an audit trail that depends on each notebook remembering an argument
would be empty in practice. An explicit ``event_sink=`` replaces it.

The reporter only appends to an in-memory queue; a background thread POSTs
batches to ``{JUPYTERHUB_API_URL}/smart/audit`` with the server's own
``JUPYTERHUB_API_TOKEN``. So reporting never slows an analysis down, and the
hub (not this code) decides whose events they are.

Only the *shape* of each request leaves the kernel: interaction, resource
type, resource id for a read, search parameter NAMES, count, status, patient
reference. Never the URL or the parameter values (they can be clinical data),
never a token. The hub's answers are honoured: 429 waits ``Retry-After``; 503
and network errors retry with backoff; a 4xx other than 429 means the batch
itself is wrong, which is logged and the batch dropped (retrying cannot help).

Why one reporter per process, not one per client: a notebook re-runs its
``connect()`` cell many times, and each reporter owns a thread and a
connection pool. All clients of a kernel share the reporter for its
(hub URL, API token); ``client.close()`` flushes it, and the reporter closes
itself at interpreter exit (:mod:`atexit`), so the last events of a kernel
that shuts down normally reach the hub.

This is the notebook's own account of what it did: a user can bypass or stop
it (see docs/audit.md, "What the trail proves"). The hub's ``token-issued``
events are the authoritative record of who got access.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import deque
from typing import Any

import httpx

from ..smart.fhir_rules import is_fhir_id, is_resource_type, is_search_param_name, patient_id

__all__ = ["API_URL_ENV", "HubAuditReporter", "hub_reporter", "to_report"]

log = logging.getLogger(__name__)

API_URL_ENV = "JUPYTERHUB_API_URL"


#: Client action names -> FHIR RESTful interaction codes accepted by the hub.
INTERACTIONS = {
    "read": "read",
    "vread": "vread",
    "search": "search-type",
    "count": "search-type",
    "operation": "operation",
    "history-instance": "history-instance",
    "history-type": "history-type",
    "create": "create",
    "update": "update",
    "patch": "patch",
    "delete": "delete",
    "transaction": "transaction",
    "batch": "batch",
}


def to_report(event: Any) -> dict[str, Any] | None:
    """The hub's wire form of a client data-access event (duck-typed), or None if not reportable.

    Reads ``action``, ``resource_type``, ``status``, ``count``, ``patient``,
    ``resource_id`` and ``params`` (pairs of name, value): values are dropped here.
    Every field is checked with the rules the hub applies
    (:mod:`jupyterhub_smart.smart.fhir_rules`, as :func:`jupyterhub_smart.audit.data_access_event`
    does) and a field the hub would refuse is left out (a name) or makes the event
    unreportable (the type): the hub refuses a batch as a whole, so one odd
    event must not cost the other 99 their place in the trail.
    """
    interaction = INTERACTIONS.get(getattr(event, "action", ""))
    resource_type = getattr(event, "resource_type", None)
    if interaction is None or not is_resource_type(resource_type):
        return None
    report: dict[str, Any] = {"interaction": interaction, "resource_type": resource_type}
    names = sorted(
        {
            pair[0]
            for pair in getattr(event, "params", ()) or ()
            if pair and is_search_param_name(pair[0])
        }
    )
    if names:
        report["search_params"] = names[:50]
    for key, low, high in (("count", 0, None), ("status", 100, 599)):
        value = getattr(event, key, None)
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= low
            and (high is None or value <= high)
        ):
            report[key] = value
    patient = getattr(event, "patient", None)
    if patient_id(patient) is not None:
        report["patient"] = patient
    resource_id = getattr(event, "resource_id", None)
    if is_fhir_id(resource_id):
        report["resource_id"] = resource_id
    return report


class HubAuditReporter:
    """An event sink for the notebook client that reports to the hub in batches."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch_size: int = 100,
        flush_interval: float = 2.0,
        max_queue: int = 10_000,
        max_backoff: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queue = max_queue
        self._dropped = 0
        self._lock = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._http = httpx.Client(
            timeout=10.0, transport=transport, headers={"Authorization": f"token {token}"}
        )
        self._thread = threading.Thread(target=self._run, name="smart-audit-reporter", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_environment(cls, **kwargs: Any) -> HubAuditReporter | None:
        """A reporter for this single-user server, or None outside JupyterHub."""
        api_url = os.environ.get("JUPYTERHUB_API_URL")
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not api_url or not token:
            return None
        return cls(api_url.rstrip("/") + "/smart/audit", token, **kwargs)

    def __repr__(self) -> str:  # never shows the token
        return f"HubAuditReporter({self.url!r})"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (events are no longer sent)."""
        return self._closed

    @property
    def pending(self) -> int:
        """Events queued or in flight, not yet accepted by the hub."""
        with self._lock:
            return len(self._queue) + self._in_flight

    def __call__(self, event: Any) -> None:
        """Queue one event (returns at once; never raises into the analysis)."""
        report = to_report(event)
        if report is None:
            return
        with self._lock:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self._dropped += 1
                if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                    log.warning(
                        "audit reports to the hub are backing up: %d oldest dropped", self._dropped
                    )
            self._queue.append(report)
            if len(self._queue) >= self.batch_size:
                self._lock.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued has been accepted by the hub (True) or time runs out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._lock.notify()
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop.

        Registered with :mod:`atexit`, so a kernel that shuts down normally
        delivers its last events. What the hub has not accepted by then is
        lost, and an ERROR says how many (a SIGKILLed kernel loses its queue
        silently: at most ``flush_interval`` seconds of reports).
        """
        if self._closed:
            return
        delivered = self.flush(timeout)
        with self._lock:
            self._closed = True
            lost = len(self._queue) + self._in_flight
            self._lock.notify_all()
        self._thread.join(timeout)
        self._http.close()
        atexit.unregister(self.close)
        if not delivered and lost:
            log.error(
                "%d data-access report(s) could not be delivered to the hub's audit trail "
                "at %s before closing",
                lost,
                self.url,
            )

    def _run(self) -> None:
        backoff = 1.0
        while True:
            with self._lock:
                if not self._queue and not self._closed:
                    self._lock.wait(self.flush_interval)
                if self._closed:
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                ]
                self._in_flight = len(batch)
            if not batch:
                continue
            wait = self._send(batch)
            with self._lock:
                if wait:  # not accepted: put it back in front, keep the order
                    self._queue.extendleft(reversed(batch))
                self._in_flight = 0
                self._lock.notify_all()
            if wait:
                delay = wait if wait > 0 else backoff
                backoff = min(backoff * 2, self.max_backoff) if wait < 0 else 1.0
                with self._lock:
                    if not self._closed:
                        self._lock.wait(delay)
            else:
                backoff = 1.0

    def _send(self, batch: list[dict[str, Any]]) -> float:
        """0 when done (sent or dropped), seconds to wait, or -1 for "back off"."""
        try:
            response = self._http.post(self.url, json={"events": batch})
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: client closed meanwhile
            log.warning("audit report to the hub failed (%s); will retry", type(exc).__name__)
            return -1
        if response.status_code == 201:
            return 0
        if response.status_code == 429:
            try:
                return max(1.0, float(response.headers.get("Retry-After", "1")))
            except ValueError:
                return 1.0
        if response.status_code >= 500:
            log.warning("hub answered %d to an audit report; will retry", response.status_code)
            return -1
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = str(response.json().get("message", ""))[:300]
        log.error(
            "hub refused an audit report (%d: %s); %d event(s) dropped",
            response.status_code,
            message,
            len(batch),
        )
        return 0


_lock = threading.Lock()
_reporters: dict[tuple[str, str], HubAuditReporter] = {}


def hub_reporter() -> HubAuditReporter | None:
    """The shared reporter for this server's hub, or None (with a warning) if it cannot be built.

    JupyterHub's spawner sets ``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN``
    in every single-user server; without them nothing can be reported, and the
    researcher is told so once per ``connect()``, in words.
    """
    api_url = os.environ.get(API_URL_ENV, "").strip()
    api_token = os.environ.get("JUPYTERHUB_API_TOKEN", "").strip()
    if not api_url or not api_token:
        log.warning(
            "%s is not set: this notebook's FHIR requests are not reported to the hub's audit "
            "trail (restart your server from the hub's home page)",
            API_URL_ENV if not api_url else "JUPYTERHUB_API_TOKEN",
        )
        return None
    key = (api_url, api_token)
    with _lock:
        reporter = _reporters.get(key)
        if reporter is None or reporter.closed:
            reporter = HubAuditReporter.from_environment()
            if reporter is None:  # the environment changed under us
                return None
            _reporters[key] = reporter
        return reporter
