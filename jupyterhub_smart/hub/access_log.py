"""Keep the OpenID Connect nonce out of JupyterHub's access log.

JupyterHub logs where each 302 points, with every query parameter whose name
contains ``token``, ``auth``, ``key``, ``code``, ``state`` or ``_xsrf`` replaced
by ``[secret]`` (``jupyterhub.log.SCRUB_PARAM_KEYS``). The login's redirect to
the EHR's authorize endpoint also carries ``nonce``, the value the id_token must
echo to belong to this login; left in the log, anyone who reads it could pair a
stolen id_token with its login. Adding the name to JupyterHub's list scrubs it
the same way, in the hub's log line for that redirect.
"""

from __future__ import annotations

from jupyterhub import log as jupyterhub_log

#: Query parameter names the hub sends that JupyterHub's own list does not cover.
EXTRA_SECRET_PARAMS = ("nonce",)


def scrub_secret_params() -> None:
    """Add :data:`EXTRA_SECRET_PARAMS` to JupyterHub's scrubbed names (once; idempotent)."""
    known = tuple(jupyterhub_log.SCRUB_PARAM_KEYS)
    missing = tuple(name for name in EXTRA_SECRET_PARAMS if name not in known)
    if missing:
        jupyterhub_log.SCRUB_PARAM_KEYS = known + missing
