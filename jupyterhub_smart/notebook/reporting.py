"""Data-access reports to the hub's audit trail, on by default in a jupyterhub-smart server.

``connect()`` in a single-user server spawned by a jupyterhub-smart hub (the
:class:`~.tokens.HubTokenProvider` path) hands every FHIR request's *shape* to
the hub's ``POST {JUPYTERHUB_API_URL}/smart/audit`` without the researcher
asking: an audit trail that depends on each notebook remembering an argument
would be empty in practice. An explicit ``event_sink=`` replaces it.

Why one reporter per process, not one per client: a notebook re-runs its
``connect()`` cell many times, and each reporter owns a thread and a
connection pool. All clients of a kernel share the reporter for its
(hub URL, API token); ``client.close()`` flushes it, and the reporter closes
itself at interpreter exit (:mod:`atexit`), so the last events of a kernel
that shuts down normally reach the hub.

The audit package (and its imports) loads on the first ``connect()`` in a hub,
never on ``import jupyterhub_smart.notebook``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..audit.reporter import HubAuditReporter

__all__ = ["API_URL_ENV", "hub_reporter"]

log = logging.getLogger(__name__)

API_URL_ENV = "JUPYTERHUB_API_URL"

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
    from ..audit.reporter import HubAuditReporter  # lazy: keeps the notebook import light

    key = (api_url, api_token)
    with _lock:
        reporter = _reporters.get(key)
        if reporter is None or reporter.closed:
            reporter = HubAuditReporter.from_environment()
            if reporter is None:  # the environment changed under us
                return None
            _reporters[key] = reporter
        return reporter
