"""``/fhir/metadata``: the CapabilityStatement, generated from what search really supports.

It carries the SMART ``oauth-uris`` security extension (the pre-discovery way
of finding the authorization server) and lists, per resource type, exactly the
interactions and search parameters that :mod:`.search` implements, so a client
reading it learns the truth.
"""

from __future__ import annotations

from typing import Any

from ..settings import SandboxSettings
from . import includes
from .search import DATE_SORTABLE, SEARCH_PARAMS
from .writes import IMMUTABLE

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SOFTWARE_VERSION = "0.1.0"
#: Bulk Data Access: the server's conformance and its three ``$export`` operations.
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
BULK_OPERATIONS = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
#: The synthetic cohorts of Group-level export (read and a parameterless search).
_GROUP: dict[str, Any] = {
    "type": "Group",
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "operation": [{"name": "export", "definition": f"{BULK_OPERATIONS}/group-export"}],
}
FHIR_OPERATIONS = "http://hl7.org/fhir/OperationDefinition"
#: Operations on a type (``$everything``, ``$lastn``), beside Bulk Data's.
TYPE_OPERATIONS: dict[str, list[dict[str, str]]] = {
    "Patient": [{"name": "everything", "definition": f"{FHIR_OPERATIONS}/Patient-everything"}],
    "Observation": [{"name": "lastn", "definition": f"{FHIR_OPERATIONS}/Observation-lastn"}],
}
#: The terminology service over the codes of the synthetic data (:mod:`.terminology`).
TERMINOLOGY: list[dict[str, Any]] = [
    {
        "type": "CodeSystem",
        "operation": [{"name": "lookup", "definition": f"{FHIR_OPERATIONS}/CodeSystem-lookup"}],
    },
    {
        "type": "ValueSet",
        "operation": [{"name": "expand", "definition": f"{FHIR_OPERATIONS}/ValueSet-expand"}],
    },
]
_KIND_TYPES = {
    "id": "token",
    "token": "token",
    "string": "string",
    "date": "date",
    "reference": "reference",
}


def capability_statement(settings: SandboxSettings) -> dict[str, Any]:
    """The server's CapabilityStatement (FHIR R4)."""
    auth = settings.auth_base_url
    resources = []
    forward, backward = includes.declared()
    for resource_type, params in SEARCH_PARAMS.items():
        codes = ["read", "vread", "search-type", "history-instance", "history-type", "create"]
        if resource_type not in IMMUTABLE:
            codes[5:5] = ["update", "patch", "delete"]
        resource: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": c} for c in codes],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": False,
            "conditionalCreate": resource_type not in IMMUTABLE,
            "conditionalRead": "not-match",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": name, "type": _KIND_TYPES[kind]} for name, kind in params.items()
            ],
        }
        resource["searchParam"].append({"name": "_lastUpdated", "type": "date"})
        if resource_type in DATE_SORTABLE:
            resource["searchParam"].append({"name": "_sort", "type": "special"})
        if forward[resource_type]:
            resource["searchInclude"] = forward[resource_type]
        if backward[resource_type]:
            resource["searchRevInclude"] = backward[resource_type]
        operations = TYPE_OPERATIONS.get(resource_type)
        if operations:
            resource["operation"] = operations
        resources.append(resource)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-07-01",
        "publisher": "jupyterhub-smart",
        "kind": "instance",
        "software": {"name": "jupyterhub-smart sandbox EHR", "version": SOFTWARE_VERSION},
        "implementation": {
            "description": "jupyterhub-smart sandbox EHR (synthetic data only)",
            "url": settings.fhir_base_url,
        },
        "instantiates": [BULK_DATA_CAPABILITY],
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ],
                            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
                        }
                    ],
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "authorize", "valueUri": f"{auth}/authorize"},
                                {"url": "token", "valueUri": f"{auth}/token"},
                                {"url": "introspect", "valueUri": f"{auth}/introspect"},
                                {"url": "revoke", "valueUri": f"{auth}/revoke"},
                            ],
                        }
                    ],
                },
                "resource": [*resources, _GROUP, *TERMINOLOGY],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [
                    {"name": "export", "definition": f"{BULK_OPERATIONS}/export"},
                    {"name": "export", "definition": f"{BULK_OPERATIONS}/patient-export"},
                    {"name": "export", "definition": f"{BULK_OPERATIONS}/group-export"},
                ],
            }
        ],
    }
