"""JupyterHub integration: the SMART on FHIR authenticator, its handlers and token API.

``c.JupyterHub.authenticator_class = "smart"`` selects :class:`SMARTAuthenticator`
(entry point ``smart`` in ``jupyterhub.authenticators``).
"""

from __future__ import annotations

from .authenticator import SMARTAuthenticator

__all__ = ["SMARTAuthenticator"]
