"""The sandbox EHR's FHIR R4 server: SQLite storage, search, synthetic data.

``FHIRStore`` is what the rest of the sandbox reads people from;
``create_fhir_blueprint`` serves ``/fhir`` (read, search, AuditEvent create,
``metadata``) behind bearer-token authorization.
"""

from __future__ import annotations

from .api import create_fhir_blueprint
from .store import FHIRStore

__all__ = ["FHIRStore", "create_fhir_blueprint"]
