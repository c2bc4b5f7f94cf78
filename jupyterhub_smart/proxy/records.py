"""The audit record of one proxied FHIR request (an R4 AuditEvent-shaped ``data-access``).

Unlike a notebook's own report (:func:`jupyterhub_smart.audit.data_access_event`,
names only), the proxy is the hub's side of the wire and records what a
disclosure account needs: who (hub user, fhirUser, client address), the
EHR, the method and FHIR interaction (create/read/vread/update/patch/delete/
history/search/operation/capabilities), the resource type and id, the query's
parameters with their values (identifiers such as ``patient=123`` are what an
accounting of disclosures asks for), the status, the bytes sent, the number of
resources returned and the patients whose compartments those resources are in
(:mod:`.scan`). The event goes through the audit module's sanitizer like any
other: a credential-looking value is redacted, never written.

Events are ``data-access`` events, so the trail's readers count them with the
notebooks' reports; ``recorded-by: fhir-proxy`` and the observer tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..audit import hub_event
from ..audit.events import ENTITY_TYPE, OBJECT_ROLE, RESTFUL_INTERACTION
from .access import FHIRRequest

__all__ = ["Outcome", "proxy_event"]

#: AuditEvent.action per interaction (C create, R read, U update, D delete, E execute).
_ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "capabilities": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "search-type": "E",
    "search-system": "E",
    "operation": "E",
}
MAX_PARAMS = 50
MAX_PATIENT_ENTITIES = 200


@dataclass
class Outcome:
    """How the request ended."""

    status: int
    bytes_sent: int = 0
    count: int | None = None
    patients: Iterable[str] = ()
    patients_omitted: int = 0
    duration_ms: int = 0
    #: Why it failed, in words (never a token): "EHR unreachable", "client disconnected"...
    problem: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def proxy_event(
    request: FHIRRequest,
    outcome: Outcome,
    *,
    username: str | None,
    fhir_user: str | None,
    issuer: str | None,
    client_address: str | None,
    user_agent: str | None,
    scope: str | None,
) -> dict[str, Any]:
    """Build the record; the audit log's sanitizer checks it again when it is written."""
    failed = outcome.status >= 400 or outcome.problem is not None
    event = hub_event(
        "data-access",
        outcome="failure" if failed else "success",
        description=outcome.problem,
        username=username,
        fhir_user=fhir_user,
        client_address=client_address,
        user_agent=user_agent,
        issuer=issuer,
    )
    event = dict(event)
    event["source"] = {**event["source"], "observer": {"display": "jupyterhub-smart FHIR proxy"}}
    event["subtype"] = [
        *event["subtype"],
        {"system": RESTFUL_INTERACTION, "code": request.interaction},
    ]
    event["action"] = _ACTIONS.get(request.interaction, "E")
    if outcome.status >= 500:
        event["outcome"] = "8"
    detail: list[dict[str, str]] = [
        {"type": "recorded-by", "valueString": "fhir-proxy"},
        {"type": "interaction", "valueString": request.interaction},
        {"type": "http-method", "valueString": request.method},
        {"type": "http-status", "valueString": str(outcome.status)},
        {"type": "bytes", "valueString": str(outcome.bytes_sent)},
        {"type": "duration-ms", "valueString": str(outcome.duration_ms)},
    ]
    if outcome.count is not None:
        detail.append({"type": "count", "valueString": str(outcome.count)})
    if request.operation:
        detail.append({"type": "operation", "valueString": request.operation})
    if scope:
        detail.append({"type": "scope-used", "valueString": scope})
    for name, value in request.params[:MAX_PARAMS]:
        detail.append({"type": f"query:{name}"[:200], "valueString": value[:1000]})
    if len(request.params) > MAX_PARAMS:
        detail.append(
            {"type": "query-omitted", "valueString": str(len(request.params) - MAX_PARAMS)}
        )
    for name, value in outcome.extra.items():
        detail.append({"type": name, "valueString": value})
    target: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "detail": detail,
    }
    if request.resource_type:
        target["name"] = request.resource_type
        if request.resource_id:
            target["what"] = {"reference": f"{request.resource_type}/{request.resource_id}"}
    entities = list(event.get("entity") or [])
    entities.append(target)
    patients = sorted(outcome.patients)
    for pid in patients[:MAX_PATIENT_ENTITIES]:
        entities.append(
            {
                "what": {"reference": f"Patient/{pid}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    omitted = outcome.patients_omitted + max(0, len(patients) - MAX_PATIENT_ENTITIES)
    if omitted:
        detail.append({"type": "patients-omitted", "valueString": str(omitted)})
    event["entity"] = entities
    return event
