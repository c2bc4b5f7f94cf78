"""JupyterHub integration: the SMART on FHIR authenticator, its handlers and token API.

``c.JupyterHub.authenticator_class = "smart"`` selects :class:`SMARTAuthenticator`
(entry point ``smart`` in ``jupyterhub.authenticators``).
"""

from __future__ import annotations

from .access_log import scrub_secret_params
from .authenticator import SMARTAuthenticator

scrub_secret_params()

__all__ = ["SMARTAuthenticator"]
