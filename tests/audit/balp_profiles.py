"""The required elements and fixed codes of the IHE BALP profiles the hub claims.

Written from the profiles' FHIR Shorthand in the BALP implementation guide
(https://profiles.ihe.net/ITI/BALP/, version 1.1), independently of
``jupyterhub_smart.audit.balp``: a test checks an exported AuditEvent against
these rules, so a mapping that drifts from the profile fails here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST_TYPE = ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest")
INTERACTION = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
USER_AGENT_TYPES = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
SOURCE, DESTINATION, APPLICATION = (DCM, "110153"), (DCM, "110152"), (DCM, "110150")
#: The server's type in BALP's Delete (input/fsh/PatientDelete.fsh in IHE/ITI.BasicAudit).
CUSTODIAN = ("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "custodian")


def _codes(concept: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding") or ()}


def _agents_with(resource: Mapping[str, Any], coding: tuple[str, str]) -> list[dict[str, Any]]:
    return [a for a in resource.get("agent") or () if coding in _codes(a.get("type"))]


def _entities(resource: Mapping[str, Any], code: str) -> list[dict[str, Any]]:
    return [
        e
        for e in resource.get("entity") or ()
        if (e.get("type") or {}).get("system") == ENTITY_TYPE and e["type"].get("code") == code
    ]


def _slice(problems: list[str], name: str, found: list[dict[str, Any]]) -> dict[str, Any] | None:
    if len(found) != 1:
        problems.append(f"{name}: {len(found)} found, the profile needs exactly 1")
        return None
    return found[0]


def _rest(
    subtypes: set[str],
    action: str,
    client: tuple[str, str],
    server: tuple[str, str],
    user_types: set[tuple[str, str]],
    query: bool,
    subtype_required: bool,
) -> Callable[[Mapping[str, Any]], list[str]]:
    def check(resource: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        kind = resource.get("type") or {}
        if (kind.get("system"), kind.get("code")) != REST_TYPE:
            problems.append("type must be audit-event-type#rest")
        sub = {
            c.get("code") for c in resource.get("subtype") or () if c.get("system") == INTERACTION
        }
        if not resource.get("subtype"):
            problems.append("subtype 1..*")
        if subtype_required and not sub & subtypes:
            problems.append(f"subtype must include one of {sorted(subtypes)}")
        if resource.get("action") != action:
            problems.append(f"action must be {action}")
        if not resource.get("recorded"):
            problems.append("recorded 1..1")
        if resource.get("outcome") != "0":
            problems.append("outcome must be 0 (success)")
        if len(resource.get("agent") or ()) < 2:
            problems.append("agent 2..*")
        for name, coding in (("agent[client]", client), ("agent[server]", server)):
            agent = _slice(problems, name, _agents_with(resource, coding))
            if agent is not None:
                if not agent.get("who"):
                    problems.append(f"{name}.who 1..1")
                if not (agent.get("network") or {}).get("address"):
                    problems.append(f"{name}.network 1..1")
                if agent.get("media"):
                    problems.append(f"{name}.media 0..0")
        users = [a for a in resource.get("agent") or () if _codes(a.get("type")) & user_types]
        if len(users) > 1:
            problems.append("agent[user] 0..1")
        for user in users:
            if not user.get("who") or user.get("requestor") is not True:
                problems.append("agent[user] needs who and requestor = true")
            if user.get("network") or user.get("media"):
                problems.append("agent[user].network and .media 0..0")
        data = _slice(
            problems, "entity[query]" if query else "entity[data]", _entities(resource, "2")
        )
        if data is not None:
            role = data.get("role") or {}
            if query:
                if (role.get("system"), role.get("code")) != (OBJECT_ROLE, "24"):
                    problems.append("entity[query].role must be object-role#24")
                if data.get("what") or data.get("detail") or data.get("lifecycle"):
                    problems.append("entity[query].what, .detail, .lifecycle 0..0")
                try:
                    base64.b64decode(data.get("query") or "", validate=True)
                except ValueError:
                    problems.append("entity[query].query must be base64")
                if not data.get("query"):
                    problems.append("entity[query].query 1..1")
            else:
                if role.get("system") != OBJECT_ROLE or role.get("code") not in {"4", "3", "20"}:
                    problems.append("entity[data].role must be from RestObjectRoles")
                if not data.get("what"):
                    problems.append("entity[data].what 1..1")
        return problems

    return check


def _patient(base: Callable[[Mapping[str, Any]], list[str]]) -> Callable[..., list[str]]:
    def check(resource: Mapping[str, Any]) -> list[str]:
        problems = base(resource)
        if len(resource.get("entity") or ()) < 2:
            problems.append("entity 2..*")
        patient = _slice(problems, "entity[patient]", _entities(resource, "1"))
        if patient is not None:
            role = patient.get("role") or {}
            if (role.get("system"), role.get("code")) != (OBJECT_ROLE, "1"):
                problems.append("entity[patient].role must be object-role#1")
            reference = (patient.get("what") or {}).get("reference") or ""
            if "Patient/" not in reference:
                problems.append("entity[patient].what must be Reference(Patient)")
        return problems

    return check


def _oauth_minimal(resource: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    agents = resource.get("agent") or []
    if not 1 <= len(agents) <= 2:
        problems.append(f"agent 1..2 ({len(agents)} found)")
    client = _slice(problems, "agent[client]", _agents_with(resource, APPLICATION))
    if client is not None and not client.get("who"):
        problems.append("agent[client].who 1..1")
    users = _agents_with(resource, (USER_AGENT_TYPES, "UserOauthAgent"))
    if len(users) > 1:
        problems.append("agent[user] 0..1")
    for user in users:
        if not user.get("who") or user.get("requestor") is not True:
            problems.append("agent[user] needs who and requestor = true")
        if len(user.get("policy") or ()) != 1:
            problems.append("agent[user].policy 1..1")
        if user.get("network") or user.get("media"):
            problems.append("agent[user].network and .media 0..0")
    return problems


_IRCP = {(PARTICIPATION, "IRCP")}
_DATA_SOURCES = {(PARTICIPATION, "AUT"), (PARTICIPATION, "INF"), (PARTICIPATION, "CST")}
_READ = _rest({"read", "vread"}, "R", DESTINATION, SOURCE, _IRCP, False, True)
_QUERY = _rest(
    {"search", "search-type", "search-system"}, "E", SOURCE, DESTINATION, _IRCP, True, False
)
_CREATE = _rest({"create"}, "C", SOURCE, DESTINATION, _DATA_SOURCES, False, True)
_UPDATE = _rest({"update", "patch"}, "U", SOURCE, DESTINATION, _DATA_SOURCES, False, True)
# Delete is not Create's pattern: agent[client] is 110150 Application, agent[server] Custodian.
_DELETE = _rest({"delete"}, "D", APPLICATION, CUSTODIAN, _DATA_SOURCES, False, True)

#: Canonical profile URL -> checker returning the list of what the resource lacks.
RULES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    BALP + "IHE.BasicAudit.Read": _READ,
    BALP + "IHE.BasicAudit.PatientRead": _patient(_READ),
    BALP + "IHE.BasicAudit.Query": _QUERY,
    BALP + "IHE.BasicAudit.PatientQuery": _patient(_QUERY),
    BALP + "IHE.BasicAudit.Create": _CREATE,
    BALP + "IHE.BasicAudit.PatientCreate": _patient(_CREATE),
    BALP + "IHE.BasicAudit.Update": _UPDATE,
    BALP + "IHE.BasicAudit.PatientUpdate": _patient(_UPDATE),
    BALP + "IHE.BasicAudit.Delete": _DELETE,
    BALP + "IHE.BasicAudit.PatientDelete": _patient(_DELETE),
    BALP + "IHE.BasicAudit.OAUTHaccessTokenUse.Minimal": _oauth_minimal,
}


def violations(resource: Mapping[str, Any], profile: str) -> list[str]:
    """What ``resource`` lacks to conform to ``profile`` (empty when it conforms)."""
    return RULES[profile](resource)
