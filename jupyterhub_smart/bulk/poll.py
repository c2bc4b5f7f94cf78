"""Polling the status URL until the manifest, the way the Bulk Data IG asks.

``Retry-After`` is honoured as given, seconds or HTTP-date, however long; when
absent, waits grow exponentially with jitter. 429 and 5xx (and a transient
OperationOutcome) are retried a bounded number of times in a row. When the
time budget cannot cover the next wait, polling stops with
:class:`~.errors.BudgetExceeded` and the server job is left alone: a poll that
times out never cancels the export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from .errors import BudgetExceeded, BulkError
from .retry import Backoff, is_transient_outcome, outcome_text, retry_after

#: Consecutive 429/5xx/transport failures tolerated before giving up.
MAX_ERRORS = 6


class JobGone(BulkError):
    """The status URL answers 404: the job was deleted or expired at the server."""


def poll(
    http: httpx.Client,
    auth: httpx.Auth,
    status_url: str,
    *,
    deadline: float,
    on_progress: Callable[[str], None] = lambda text: None,
    sleep: Callable[[float], Any] = time.sleep,
) -> dict[str, Any]:
    """GET the status URL until it answers 200; return the manifest (unchecked JSON object)."""
    backoff = Backoff()
    errors = 0
    while True:
        try:
            response = http.get(
                status_url,
                headers={"Accept": "application/json"},
                auth=auth,
                follow_redirects=False,
            )
        except httpx.TransportError as exc:
            errors += 1
            if errors > MAX_ERRORS:
                raise BulkError(f"the status URL kept failing ({type(exc).__name__})") from None
            _sleep(backoff.next(), deadline, sleep)
            continue
        status = response.status_code
        if status == 200:
            try:
                manifest = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise BulkError("the completed export's manifest is not JSON") from None
            if isinstance(manifest, dict) and manifest.get("resourceType") == "OperationOutcome":
                raise BulkError(
                    "the server answered an OperationOutcome instead of a manifest: "
                    + (outcome_text(response.content) or "(no diagnostics)")
                )
            if not isinstance(manifest, dict):
                raise BulkError("the completed export's manifest is not a JSON object")
            return manifest
        if status == 202:
            errors = 0
            progress = response.headers.get("x-progress")
            if progress:
                on_progress(progress[:100])
            wait = retry_after(response.headers.get("retry-after"))
            _sleep(wait if wait is not None else backoff.next(), deadline, sleep)
            continue
        if status == 404:
            raise JobGone(
                "the server no longer knows this export (deleted or expired); start a new one"
            )
        if status == 429 or status >= 500:
            errors += 1
            transient = status == 429 or is_transient_outcome(response.content)
            if errors > MAX_ERRORS:
                detail = outcome_text(response.content)
                raise BulkError(
                    f"the status URL answered HTTP {status} {MAX_ERRORS + 1} times in a row"
                    + (f": {detail}" if detail else "")
                    + ("" if transient else "; the export may have failed at the server")
                )
            wait = retry_after(response.headers.get("retry-after"))
            _sleep(wait if wait is not None else backoff.next(), deadline, sleep)
            continue
        detail = outcome_text(response.content) or f"HTTP {status}"
        raise BulkError(f"the export failed at the server: {detail}")


def _sleep(seconds: float, deadline: float, sleep: Callable[[float], Any]) -> None:
    if time.monotonic() + seconds > deadline:
        raise BudgetExceeded(
            f"the --timeout budget ends before the next status poll (in {seconds:.0f} s); "
            "the export keeps running at the server: continue with --resume"
        )
    sleep(seconds)
