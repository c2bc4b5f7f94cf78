"""Keep the OpenID Connect nonce and the EHR's launch handle out of JupyterHub's access log.

JupyterHub logs where each 302 points, with every query parameter whose name
contains ``token``, ``auth``, ``key``, ``code``, ``state`` or ``_xsrf`` replaced
by ``[secret]`` (``jupyterhub.log.SCRUB_PARAM_KEYS``). The login's redirect to
the EHR's authorize endpoint also carries ``nonce``, the value the id_token must
echo to belong to this login; left in the log, anyone who reads it could pair a
stolen id_token with its login. An EHR launch also carries ``launch``, on
``/hub/oauth_login`` and on that redirect: a bearer handle to the user's EHR
session and patient. Adding the names to JupyterHub's list scrubs them the same
way, in the hub's log lines for the launch and the redirect.
"""

from __future__ import annotations

from jupyterhub import log as jupyterhub_log

#: Query parameter names the hub sends that JupyterHub's own list does not cover.
EXTRA_SECRET_PARAMS = ("nonce", "launch")


def scrub_secret_params() -> None:
    """Add :data:`EXTRA_SECRET_PARAMS` to JupyterHub's scrubbed names (once; idempotent)."""
    known = tuple(jupyterhub_log.SCRUB_PARAM_KEYS)
    missing = tuple(name for name in EXTRA_SECRET_PARAMS if name not in known)
    if missing:
        jupyterhub_log.SCRUB_PARAM_KEYS = known + missing
