"""jupyterhub_smart.notebook: FHIR data in a notebook, with tokens that do not run out.

::

    from jupyterhub_smart.notebook import connect
    fhir = connect()                       # in a jupyterhub-smart single-user server
    hr = fhir.observations(code="8867-4").to_pandas()

Modules, one job each: :mod:`.connect` (entry points), :mod:`.tokens` (token
providers), :mod:`.http` (requests, retries, errors, URL boundaries),
:mod:`.search` (paging), :mod:`.flatten` (typed columns), :mod:`.context`
(launch context, patient banner), :mod:`.scopecheck` (scope awareness),
:mod:`.auth` (httpx/requests auth for other libraries), :mod:`.events` (the
audit seam), :mod:`.errors`.

This package runs inside kernels: it never imports ``jupyterhub_smart.hub``
(nor JupyterHub or tornado).
"""

from __future__ import annotations

from .client import AsyncSMARTClient, SMARTClient
from .connect import connect, connect_async
from .context import PatientBanner, SMARTContext
from .errors import (
    FHIRConnectionError,
    FHIRError,
    IncompleteSearch,
    IncompleteSearchWarning,
    NoPatientInContext,
    NotInSMARTHub,
    OperationNotDeclared,
    ReauthenticationRequired,
    ScopeNotGranted,
    SMARTNotebookError,
    TerminologyUnavailable,
    TokenUnavailable,
    UnsafeURL,
)
from .events import DataAccessEvent
from .http import RetryPolicy
from .tokens import (
    CallableTokenProvider,
    HubTokenProvider,
    StaticTokenProvider,
    TokenInfo,
    TokenProvider,
)

__all__ = [
    "AsyncSMARTClient",
    "CallableTokenProvider",
    "DataAccessEvent",
    "FHIRConnectionError",
    "FHIRError",
    "HubTokenProvider",
    "IncompleteSearch",
    "IncompleteSearchWarning",
    "NoPatientInContext",
    "NotInSMARTHub",
    "OperationNotDeclared",
    "PatientBanner",
    "ReauthenticationRequired",
    "RetryPolicy",
    "SMARTClient",
    "SMARTContext",
    "SMARTNotebookError",
    "ScopeNotGranted",
    "StaticTokenProvider",
    "TerminologyUnavailable",
    "TokenInfo",
    "TokenProvider",
    "TokenUnavailable",
    "UnsafeURL",
    "connect",
    "connect_async",
]
