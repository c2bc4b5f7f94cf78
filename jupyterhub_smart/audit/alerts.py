"""Alert rules evaluated as audit records are written; an alert is an audit record too.

:class:`AlertSink` is a sink of the :class:`~.log.AuditLog`: it sees every
record once it is durable, runs the rules over it, and for each rule that
fires submits an ``alert-...`` event to the same log (so the alert is chained,
verifiable, and goes to every sink like any record: the syslog sink sends
actions starting with ``alert`` at severity 1, Alert) and, when a webhook is
configured, posts a short summary there. Rules never see alert records, so an
alert cannot set off another.

The rules (thresholds in :class:`AlertRules`, set through SMARTAuthenticator
options, see docs/audit.md):

``alert-patient-spread``
    one user touched more than ``patient_limit`` distinct patients within
    ``patient_window`` seconds (data access, sign-ins and tokens handed out in
    a patient's context);
``alert-out-of-context``
    a user whose sign-in granted *user-level* scopes (``user/...``), and so
    could read any patient the EHR lets them, read data of a patient other
    than the one the EHR launch chose;
``alert-refused-tokens``
    ``refused_limit`` or more refused tokens for one user within
    ``refused_window`` seconds (the FHIR server answered 401, a refresh failed,
    the user had to sign in again);
``alert-new-address``
    a user signed in from a network address not seen for them before (the
    first sign-in a hub process sees for a user sets the baseline).

Each rule fires once per user and window, not once per record. The state is
in memory and bounded. It outlives a restart: the sink writes it to
``<log>.alerts.json`` beside the log (owner-only, like the log) at most once a
minute and when the log closes, with the ``seq`` it covers; at start-up it is
read back and the records written after that ``seq`` are replayed through the
rules. A rule that fires in the replay is recorded only if the trail has no
such alert after its trigger (a crash between the trigger's write and the
alert's), so an alert is neither lost nor recorded twice. The webhook is told
again of the alert records in the replayed range: a crash may have come before
it was told, and its payload's ``log_id`` and ``seq`` let a receiver drop a
repeat (at least once). Without the file (first start) the state starts empty.

Runs on the log's writer thread, so it does only bounded in-memory work: the
alert is queued to the log (never waited on) and the webhook has its own
thread and queue (:class:`Webhook`), so a slow or dead receiver never delays
the trail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson

from .events import hub_event
from .index import row_of
from .log import open_log_file, rotated_files

log = logging.getLogger(__name__)

__all__ = ["ALERT_ACTIONS", "AlertRules", "AlertSink", "Evaluator", "Webhook"]

#: The alert kinds (AuditEvent subtype codes). Every one starts with ``alert``.
ALERT_ACTIONS = (
    "alert-patient-spread",
    "alert-out-of-context",
    "alert-refused-tokens",
    "alert-new-address",
)
#: Actions that put one patient in a user's hands.
_PATIENT_ACTIONS = frozenset({"data-access", "login-succeeded", "token-issued", "token-refreshed"})
#: Users (and addresses per user) remembered at most: a bound on memory.
MAX_TRACKED = 10_000


@dataclass(frozen=True)
class AlertRules:
    """Thresholds; 0 (or False) switches a rule off."""

    patient_limit: int = 50
    patient_window: float = 3600.0
    out_of_context: bool = True
    refused_limit: int = 5
    refused_window: float = 600.0
    new_address: bool = True


@dataclass(frozen=True)
class Alert:
    """One rule that fired: what to record."""

    action: str
    description: str
    username: str | None
    fhir_user: str | None = None
    patient: str | None = None
    client_address: str | None = None
    issuer: str | None = None


def _seconds(iso: str | None) -> float:
    if not iso:
        return time.time()
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()


class _Bounded(OrderedDict[str, Any]):
    """An LRU dict holding at most ``MAX_TRACKED`` keys."""

    def touch(self, key: str, default: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = default()
        if len(self) > MAX_TRACKED:
            self.popitem(last=False)
        return value


def _granted_scopes(record: Mapping[str, Any]) -> list[str]:
    for entity in record.get("entity") or ():
        for detail in entity.get("detail") or ():
            if detail.get("type") == "scopes-granted":
                return str(detail.get("valueString") or "").split()
    return []


def _http_status(record: Mapping[str, Any]) -> int | None:
    for entity in record.get("entity") or ():
        for detail in entity.get("detail") or ():
            if detail.get("type") == "http-status":
                try:
                    return int(detail.get("valueString"))
                except (TypeError, ValueError):
                    return None
    return None


class Evaluator:
    """The rules' state and logic, one record at a time (no I/O: testable on its own)."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self._patients: _Bounded = _Bounded()  # user -> deque[(t, patient)]
        self._refused: _Bounded = _Bounded()  # user -> deque[t]
        self._context: _Bounded = _Bounded()  # user -> (patient or None, user-level scopes)
        self._addresses: _Bounded = _Bounded()  # user -> set of addresses
        self._quiet: dict[tuple[str, str], float] = {}  # (rule, user) -> t until which quiet

    def _fire(self, rule: str, user: str, now: float, window: float) -> bool:
        until = self._quiet.get((rule, user), 0.0)
        if now < until:
            return False
        self._quiet[(rule, user)] = now + window
        if len(self._quiet) > 4 * MAX_TRACKED:
            self._quiet = {k: v for k, v in self._quiet.items() if v > now}
        return True

    def state(self) -> dict[str, Any]:
        """The rules' memory as JSON-ready data (for :meth:`restore` after a restart)."""
        return {
            "patients": {u: list(map(list, d)) for u, d in self._patients.items()},
            "refused": {u: list(d) for u, d in self._refused.items()},
            "context": {u: list(c) for u, c in self._context.items() if c is not None},
            "addresses": {u: sorted(a) for u, a in self._addresses.items()},
            "quiet": [[rule, user, until] for (rule, user), until in self._quiet.items()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state` gave (malformed parts are skipped)."""
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            for user, seen in (state.get("patients") or {}).items():
                self._patients.touch(user, deque).extend((float(t), str(p)) for t, p in seen)
            for user, times in (state.get("refused") or {}).items():
                self._refused.touch(user, deque).extend(float(t) for t in times)
            for user, (patient, user_level) in (state.get("context") or {}).items():
                self._context.touch(user, lambda: None)
                self._context[user] = (patient, bool(user_level))
            for user, addresses in (state.get("addresses") or {}).items():
                self._addresses.touch(user, set).update(str(a) for a in addresses)
            for rule, user, until in state.get("quiet") or ():
                self._quiet[(str(rule), str(user))] = float(until)

    def evaluate(self, record: Mapping[str, Any]) -> list[Alert]:
        """The alerts this record sets off (none for an alert record)."""
        (
            iso,
            action,
            outcome,
            user,
            fhir_user,
            address,
            patient,
            issuer,
            _server,
            _rtype,
            _interaction,
            _count,
        ) = row_of(record)
        if not action or action.startswith("alert") or not (user or fhir_user):
            return []
        who = str(user or fhir_user)
        now = _seconds(iso)
        alerts: list[Alert] = []
        rules = self.rules
        base = {"username": user, "fhir_user": fhir_user, "issuer": issuer}

        if action == "login-succeeded":
            scopes = _granted_scopes(record)
            user_level = any(s.startswith("user/") for s in scopes)
            self._context.touch(who, lambda: None)
            self._context[who] = (patient, user_level)
            if rules.new_address and address:
                known: set[str] = self._addresses.touch(who, set)
                if known and address not in known:
                    alerts.append(
                        Alert(
                            "alert-new-address",
                            f"{who} signed in from {address}, an address not seen for this "
                            f"user before (known: {', '.join(sorted(known)[:5])})",
                            client_address=address,
                            **base,
                        )
                    )
                if len(known) < 100:
                    known.add(address)

        if rules.patient_limit and patient and action in _PATIENT_ACTIONS and outcome == "0":
            seen: deque[tuple[float, str]] = self._patients.touch(who, deque)
            seen.append((now, patient))
            while seen and seen[0][0] < now - rules.patient_window:
                seen.popleft()
            while len(seen) > 4 * rules.patient_limit + 16:  # bound: only distinctness counts
                seen.popleft()
            distinct = {p for _, p in seen}
            if len(distinct) > rules.patient_limit and self._fire(
                "patient-spread", who, now, rules.patient_window
            ):
                alerts.append(
                    Alert(
                        "alert-patient-spread",
                        f"{who} touched {len(distinct)} distinct patients within "
                        f"{rules.patient_window / 60:g} minutes (limit {rules.patient_limit})",
                        client_address=address,
                        **base,
                    )
                )

        if rules.out_of_context and action == "data-access" and patient and outcome == "0":
            context = self._context.get(who)
            if context is not None:
                launched, user_level = context
                if user_level and launched and patient != launched:
                    alerts.append(
                        Alert(
                            "alert-out-of-context",
                            f"{who} read data of {patient} while signed in (with user-level "
                            f"scopes) from an EHR launch for {launched}",
                            patient=patient,
                            client_address=address,
                            **base,
                        )
                    )

        refused = (
            (action == "token-issued" and "refused token" in str(record.get("outcomeDesc") or ""))
            or (action in ("reauthentication-required", "refresh-failed") and outcome != "0")
            or (action == "data-access" and _http_status(record) == 401)
        )
        if rules.refused_limit and refused:
            times: deque[float] = self._refused.touch(who, deque)
            times.append(now)
            while times and times[0] < now - rules.refused_window:
                times.popleft()
            while len(times) > rules.refused_limit:
                times.popleft()
            if len(times) >= rules.refused_limit and self._fire(
                "refused-tokens", who, now, rules.refused_window
            ):
                alerts.append(
                    Alert(
                        "alert-refused-tokens",
                        f"{len(times)} refused tokens for {who} within "
                        f"{rules.refused_window / 60:g} minutes (limit {rules.refused_limit})",
                        client_address=address,
                        **base,
                    )
                )
        return alerts


class Webhook:
    """POSTs alert summaries to one URL from its own thread, with retries; never blocks.

    The payload holds the alert's kind, time, the log's ``seq`` for it, the
    user, patient reference, address and the description: references, never
    a token (audit records hold none). The queue is bounded; when the
    receiver is down long enough to fill it, the oldest summaries are dropped
    with an error in the hub's log (the alerts themselves are in the trail).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: float = 1.0,
        max_queue: int = 1000,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.backoff = backoff
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queue)
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name="audit-alert-webhook", daemon=True)
        self._thread.start()

    def send(self, payload: dict[str, Any]) -> None:
        """Queue a payload; drops the oldest when full (logged), never waits."""
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    log.error("Alert webhook: queue full, oldest alert summary dropped")
                except queue.Empty:
                    pass

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            self._post(payload)

    def _post(self, payload: dict[str, Any]) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._client.post(self.url, json=payload)
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    log.error(
                        "Alert webhook refused %s (%s); not retried", payload["kind"], problem
                    )
                    return
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < self.attempts:
                log.warning(
                    "Alert webhook: %s for %s, retry %d in %.1fs",
                    problem,
                    payload["kind"],
                    attempt,
                    delay,
                )
                time.sleep(delay)
                delay *= 2
        log.error(
            "Alert webhook: %s not delivered after %d attempts", payload["kind"], self.attempts
        )

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for up to ``timeout`` seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._client.close()


class AlertSink:
    """The audit-log sink that evaluates the rules and records what fires.

    ``submit`` is the log's :meth:`~.log.AuditLog.submit` (set by
    :meth:`attach`); alerts are queued there and not waited on.
    """

    #: Seconds between two writes of the rules' state.
    SAVE_EVERY = 60.0

    def __init__(self, rules: AlertRules, webhook: Webhook | None = None) -> None:
        self.evaluator = Evaluator(rules)
        self.webhook = webhook
        self._submit: Callable[[Mapping[str, Any]], Any] | None = None
        self._log: Any = None
        self._state_path: Any = None
        self._seen: tuple[str, int] = ("", 0)  # (log id, seq) the state covers
        self._saved_at = 0.0

    def attach(self, audit_log: Any) -> None:
        """Record alerts in ``audit_log``; take back the rules' state from before a restart."""
        self._submit = audit_log.submit
        self._log = audit_log
        self._state_path = audit_log.path.with_name(audit_log.path.name + ".alerts.json")
        try:
            self._resume()
        except Exception:  # the rules must work even if their memory cannot be read
            log.exception("Audit alert rules: their state could not be read back; starting empty")
        self._saved_at = time.monotonic()

    def _resume(self) -> None:
        try:
            saved = orjson.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return
        log_id, head = self._log.log_id, self._log.head[0]
        if not isinstance(saved, dict) or saved.get("log_id") != log_id or not log_id:
            return
        self.evaluator.restore(saved.get("state") or {})
        after = int(saved.get("seq") or 0)
        replayed = 0
        fired: list[Alert] = []  # by the replay, not yet found in the trail
        for record in _records_after(self._log.path, after, head):
            replayed += 1
            action = _alert_action(record)
            if action is None:
                fired.extend(self.evaluator.evaluate(record))
                continue
            user = row_of(record)[3]
            for alert in fired:
                if (alert.action, alert.username) == (action, user):
                    fired.remove(alert)  # recorded before the stop
                    break
            self._notify(action, record)
        self._seen = (log_id, head)
        log.info(
            "Audit alert rules: state of seq %d read back, %d later record(s) replayed, "
            "%d alert(s) the stop kept from the trail recorded now",
            after,
            replayed,
            len(fired),
        )
        for alert in fired:
            self._record(alert)

    def save(self) -> None:
        """Write the rules' state beside the log (owner-only), for the next start."""
        log_id, seq = self._seen
        if self._state_path is None or not log_id:
            return
        data = orjson.dumps({"log_id": log_id, "seq": seq, "state": self.evaluator.state()})
        tmp = self._state_path.with_name("." + self._state_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.error("Audit alert rules: state not saved (%s)", exc.strerror or exc)

    def accept(self, records: Sequence[Mapping[str, Any]]) -> None:
        if records:
            last = records[-1]
            self._seen = (str(last.get("log_id") or ""), int(last.get("seq") or 0))
        self._accept(records)
        if time.monotonic() - self._saved_at >= self.SAVE_EVERY:
            self._saved_at = time.monotonic()
            self.save()

    def _accept(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            action = _alert_action(record)
            if action is not None:
                self._notify(action, record)
                continue
            try:
                alerts = self.evaluator.evaluate(record)
            except Exception:  # a rule must never take the trail down
                log.exception("Audit alert rules failed on seq %s", record.get("seq"))
                continue
            for alert in alerts:
                self._record(alert)

    def _record(self, alert: Alert) -> None:
        log.warning("Audit alert %s: %s", alert.action, alert.description)
        if self._submit is None:
            return
        try:
            self._submit(
                hub_event(
                    alert.action,
                    description=alert.description,
                    username=alert.username,
                    fhir_user=alert.fhir_user,
                    patient=alert.patient,
                    client_address=alert.client_address,
                    issuer=alert.issuer,
                )
            )
        except Exception as exc:  # the log closing, its backlog full: said, not raised
            log.error("Audit alert %s not recorded: %s", alert.action, exc)

    def _notify(self, action: str, record: Mapping[str, Any]) -> None:
        """The alert is durable in the log: now tell the webhook, with its seq."""
        if self.webhook is None:
            return
        row = row_of(record)
        self.webhook.send(
            {
                "kind": action,
                "seq": record.get("seq"),
                "time": record.get("time"),
                "user": row[3],
                "fhir_user": row[4],
                "address": row[5],
                "patient": row[6],
                "description": record.get("outcomeDesc"),
                "log_id": record.get("log_id"),
            }
        )

    def close(self) -> None:
        self.save()
        if self.webhook is not None:
            self.webhook.close()


def _alert_action(record: Mapping[str, Any]) -> str | None:
    """The ``alert-*`` action of an alert record; None for any other record."""
    for coding in record.get("subtype") or ():
        code = coding.get("code", "")
        if isinstance(code, str) and code.startswith("alert"):
            return code
    return None


def _records_after(path: Any, after: int, head: int) -> Any:
    """The records with ``after < seq <= head`` from the log's files (only those that hold them)."""
    files = [*rotated_files(path), path]
    starts = []
    for candidate in files[:-1]:
        name = candidate.name[:-3] if candidate.name.endswith(".gz") else candidate.name
        starts.append(int(name.rsplit(".", 1)[1]))
    keep = [
        f for i, f in enumerate(files[:-1]) if i + 1 >= len(starts) or starts[i + 1] > after + 1
    ]
    for candidate in [*keep, path]:
        if not candidate.exists():
            continue
        with open_log_file(candidate) as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                record = orjson.loads(raw)
                seq = record.get("seq")
                if isinstance(seq, int) and after < seq <= head:
                    yield record
