"""Tunables and injected faults of the sandbox's Bulk Data ``$export`` server.

They live apart from :class:`~jupyterhub_smart.sandbox.settings.SandboxSettings`
because only the ``$export`` endpoints read them, and tests shorten them (link
lifetime, job duration, file size) to exercise expiry, polling and paging in
seconds.

Faults make the server misbehave the way real EHRs do, so that a client's
robustness is tested against a real server rather than a mock. Each fault is
``name`` (fires once), ``name:N`` (the first N times) or ``name:*`` (always):

=====================  ========================================================
``kickoff-429``        a kick-off answers 429 with ``Retry-After: 1``
``status-500``         a status poll answers 500 (an OperationOutcome, code
                       ``exception``)
``status-transient``   a status poll answers 500 with a ``transient`` issue
``status-429``         a status poll answers 429 with ``Retry-After: 1``
``retry-after-date``   in-progress polls give ``Retry-After`` as an HTTP-date
``forever``            jobs never complete (202 on every poll)
``file-503``           a file download answers 503
``truncate``           a file download stops halfway through its body
``expire``             a manifest's file links are already expired
``slow``               a file's bytes are sent in small, delayed pieces
``no-range``           file downloads ignore ``Range`` (always send the whole file)
``reject-repeated``    a kick-off with a repeated ``_type`` is refused (400),
                       like servers that accept comma-joined values only
``outcome-manifest``   a completed job answers 200 with an OperationOutcome
                       instead of a manifest
=====================  ========================================================
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

FAULTS = frozenset(
    {
        "kickoff-429",
        "status-500",
        "status-transient",
        "status-429",
        "retry-after-date",
        "forever",
        "file-503",
        "truncate",
        "expire",
        "slow",
        "no-range",
        "reject-repeated",
        "outcome-manifest",
    }
)


class Faults:
    """Counters of the faults still to inject (thread-safe: waitress serves from threads)."""

    def __init__(self, remaining: dict[str, int | None]) -> None:
        #: fault name -> times left, ``None`` for always.
        self._remaining = dict(remaining)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Parse ``name[:N|:*],...``; ``ValueError`` names an unknown fault or bad count."""
        remaining: dict[str, int | None] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, count = item.partition(":")
            if name not in FAULTS:
                raise ValueError(f"unknown bulk fault {name!r}; known: {', '.join(sorted(FAULTS))}")
            if count in ("", "1"):
                remaining[name] = 1
            elif count == "*":
                remaining[name] = None
            elif count.isascii() and count.isdigit() and int(count) > 0:
                remaining[name] = int(count)
            else:
                raise ValueError(f"bulk fault {name!r}: count must be a positive number or '*'")
        return cls(remaining)

    def fire(self, name: str) -> bool:
        """True (and one use spent) when fault ``name`` should be injected now."""
        with self._lock:
            if name not in self._remaining:
                return False
            left = self._remaining[name]
            if left is None:
                return True
            if left <= 1:
                del self._remaining[name]
            else:
                self._remaining[name] = left - 1
            return True

    def active(self, name: str) -> bool:
        """Whether fault ``name`` is configured and not used up (without spending it)."""
        with self._lock:
            return name in self._remaining

    def __repr__(self) -> str:
        return f"Faults({sorted(self._remaining)})"


@dataclass(frozen=True)
class BulkOptions:
    """How the ``$export`` server behaves."""

    #: Seconds a manifest's file links stay valid (a fresh status GET issues new ones).
    link_lifetime: int = 3600
    #: A job reports "in progress" for at least this many seconds (so clients poll).
    job_seconds: float = 1.0
    #: ``Retry-After`` (seconds) sent with in-progress status answers and 429s.
    retry_after: int = 1
    #: Resources per output file; larger types are split over several files.
    file_resources: int = 10_000
    #: Output entries per manifest page when the client allows partial manifests.
    manifest_page: int = 5
    #: The last N Observations count as deleted on ``DELETED_AT`` (for ``_since`` exports).
    deleted_observations: int = 0
    faults: Faults = field(default_factory=lambda: Faults({}))
