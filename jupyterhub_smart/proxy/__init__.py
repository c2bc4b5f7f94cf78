"""jupyterhub_smart.proxy: the FHIR proxy that keeps EHR tokens out of kernels.

In proxy mode (``c.SMARTAuthenticator.fhir_access = "proxy"``) the hub runs
this package as a JupyterHub-managed service (``python -m
jupyterhub_smart.proxy``): its own process, so the hub's event loop never
carries FHIR data. It serves ``/services/smart-fhir/<issuer key>/<FHIR path>``,
authenticates each request with the caller's JupyterHub token, forwards it with
the user's EHR token, streams the answer back with the EHR's URLs rewritten to
its own, and records every request in its audit trail.

Modules, one job each: :mod:`.app` (server and pipeline), :mod:`.config`,
:mod:`.paths` (path checks), :mod:`.access` (interaction and scopes),
:mod:`.headers` (allow-lists), :mod:`.sessions` (caller and token, from the
hub), :mod:`.forward` (the EHR side), :mod:`.rewrite` (URLs in bodies),
:mod:`.scan` (counts for the record), :mod:`.limits` (per-user fairness),
:mod:`.records` (audit events), :mod:`.errors`.
"""

from __future__ import annotations

from .config import ProxyConfig

__all__ = ["ProxyConfig"]
