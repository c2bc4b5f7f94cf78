"""Shape exported AuditEvents after the IHE Basic Audit Log Patterns (BALP) profiles.

The log keeps each event in the hub's own AuditEvent shape (see :mod:`.events`);
audit repositories and SIEMs that speak IHE expect BALP's shape: an agent per
participant typed with DICOM role codes, the user without a network address, the
FHIR server as an agent, a ``Query`` entity carrying the request in base64, and
``meta.profile`` naming the pattern followed. :func:`conform` derives that shape
from a record converted by :func:`.export.to_audit_event`; the chain extension
still ties the resource to its line, so nothing is lost or reinterpreted beyond
moving fields to where BALP wants them.

Which profile an event claims is data: :data:`KINDS` maps each hub action (and
each RESTful interaction of a ``data-access`` event) to a :class:`Kind`; an alert
kind (an action whose code starts with ``alert``) maps through
:data:`PREFIX_KINDS`. A new kind is one entry. A profile is claimed in
``meta.profile`` only when the event satisfies it: BALP's RESTful profiles fix
``outcome`` to ``0`` (a failure is "recorded differently"), the ``Patient*``
variants need a Patient entity, and the OAuth pattern needs a token identifier.

Profiles (BALP 1.1, FHIR R4), each cited where its mapping is made below:
https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read and the
others under the same base. BALP defines no profile for a login or a logout:
those follow the DICOM "User Authentication" pattern (type ``110114``, subtype
``110122`` Login / ``110123`` Logout) that FHIR's own login example uses, and
claim the OAuth token-use pattern when they name the token.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .events import (
    ACTION_SYSTEM,
    DCM,
    ENTITY_TYPE,
    ISSUER_SYSTEM,
    OBJECT_ROLE,
    RESTFUL_INTERACTION,
    TOKEN_HASH_SYSTEM,
)

#: Base of every BALP profile's canonical URL.
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
USER_AGENT_TYPES = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
#: Identifier system for the hub itself as an OAuth client (value: its host name).
HUB_SYSTEM = "urn:jupyterhub-smart:hub"
#: Extension keeping what BALP has no element for (result count, HTTP status...).
REST_DETAIL_EXTENSION = "urn:jupyterhub-smart:rest-detail"
#: Extension with the user's browser address, user agent and Jupyter server (token events).
USER_CLIENT_EXTENSION = "urn:jupyterhub-smart:user-client"

_SOURCE_ROLE = {"system": DCM, "code": "110153", "display": "Source Role ID"}
_DESTINATION_ROLE = {"system": DCM, "code": "110152", "display": "Destination Role ID"}
_APPLICATION = {"system": DCM, "code": "110150", "display": "Application"}
_CUSTODIAN = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "custodian",
    "display": "Custodian",
}
_IRCP = {"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}
_AUTHOR = {"system": PARTICIPATION, "code": "AUT", "display": "Author"}
_OAUTH_USER = {"system": USER_AGENT_TYPES, "code": "UserOauthAgent"}
_DOMAIN_RESOURCE = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}
_QUERY_ROLE = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
_OPERATION = {"system": RESTFUL_INTERACTION, "code": "operation"}
_NETWORK_MACHINE_NAME, _NETWORK_IP, _NETWORK_URI = "1", "2", "5"


@dataclass(frozen=True)
class Kind:
    """How one kind of event maps onto BALP.

    ``shape``: ``"read"`` (data flows server to client: the client is the
    Destination), ``"query"`` and ``"write"`` (the client is the Source),
    ``"token"`` (an OAuth token was obtained or used), ``"plain"`` (no BALP
    pattern: agents tidied, nothing claimed). ``profile`` and
    ``patient_profile`` are claimed on success, the latter when a Patient is
    involved; ``token_profile`` whenever the event names its token.
    """

    shape: str
    profile: str | None = None
    patient_profile: str | None = None
    token_profile: str | None = None
    user_type: Mapping[str, str] | None = None
    #: The client's and the server's agent type when the pattern names its own (Delete).
    client_role: Mapping[str, str] | None = None
    server_role: Mapping[str, str] | None = None


# https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read and .PatientRead:
# type rest, subtype read|vread, action R, client 110152, server 110153, entity data (role 4).
_READ = Kind("read", BALP + "IHE.BasicAudit.Read", BALP + "IHE.BasicAudit.PatientRead", None, _IRCP)
# https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query and .PatientQuery:
# type rest, action E, client 110153, server 110152, entity query (role 24, base64 query).
_QUERY = Kind(
    "query", BALP + "IHE.BasicAudit.Query", BALP + "IHE.BasicAudit.PatientQuery", None, _IRCP
)
# https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create / .PatientCreate,
# .Update / .PatientUpdate: client 110153, server 110152, user from the DataSources value set
# (Author), entity data (role 4).
_CREATE = Kind(
    "write", BALP + "IHE.BasicAudit.Create", BALP + "IHE.BasicAudit.PatientCreate", None, _AUTHOR
)
_UPDATE = Kind(
    "write", BALP + "IHE.BasicAudit.Update", BALP + "IHE.BasicAudit.PatientUpdate", None, _AUTHOR
)
# https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Delete / .PatientDelete:
# not Create's pattern: client 110150 Application (no Source Role), server typed Custodian
# (provenance-participant-type), user from DataSources (Author), action D, entity data (role 4).
_DELETE = Kind(
    "write",
    BALP + "IHE.BasicAudit.Delete",
    BALP + "IHE.BasicAudit.PatientDelete",
    None,
    _AUTHOR,
    client_role=_APPLICATION,
    server_role=_CUSTODIAN,
)
# https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.OAUTHaccessTokenUse.Minimal:
# agent client 110150 Application with who; agent user typed UserOauthAgent, requestor true,
# policy = the token's id (here its salted hash as a URN: the hub keeps no token material),
# no network.
_TOKEN = Kind("token", token_profile=BALP + "IHE.BasicAudit.OAUTHaccessTokenUse.Minimal")
_PLAIN = Kind("plain")

#: RESTful interaction (``data-access`` subtype) -> kind.
INTERACTION_KINDS: dict[str, Kind] = {
    "read": _READ,
    "vread": _READ,
    "search-type": _QUERY,
    "search-system": _QUERY,
    "history-instance": _QUERY,
    "history-type": _QUERY,
    "operation": _QUERY,
    "capabilities": _QUERY,
    "create": _CREATE,
    "update": _UPDATE,
    "patch": _UPDATE,
    "delete": _DELETE,
    # A batch or transaction Bundle holds interactions of every kind: BALP has no
    # pattern for the whole (a server audits each entry as its own interaction).
    "batch": _PLAIN,
    "transaction": _PLAIN,
}

#: Hub action -> kind (``data-access`` goes through :data:`INTERACTION_KINDS`).
KINDS: dict[str, Kind] = {
    # The SMART launch completes with login-succeeded: the EHR's token is obtained.
    "login-succeeded": _TOKEN,
    "token-issued": _TOKEN,
    "token-refreshed": _TOKEN,
    "token-revoked": _TOKEN,
    "refresh-failed": _TOKEN,
    "login-failed": _PLAIN,
    "launch-received": _PLAIN,
    "logout": _TOKEN,
    "automatic-logoff": _TOKEN,
    "reauthentication-required": _TOKEN,
    "access-withdrawn": _TOKEN,
    "token-revocation-failed": _TOKEN,
    "issuer-refused": _PLAIN,
    "audit-recovered": _PLAIN,
    "database-unavailable": _PLAIN,
    "database-recovered": _PLAIN,
    "audit-checkpoint": _PLAIN,
    "audit-retention": _PLAIN,
    # A Bulk Data kick-off is the $export operation: a query of the FHIR server.
    "bulk-export": _QUERY,
}

#: Action code prefix -> kind, for families of actions (alerts: Security Alert, no pattern).
PREFIX_KINDS: dict[str, Kind] = {"alert": _PLAIN}


def kind_of(resource: Mapping[str, Any]) -> Kind:
    """The :class:`Kind` of an AuditEvent, from its action code (and interaction)."""
    action = _coding_code(resource, ACTION_SYSTEM)
    if action == "data-access":
        return INTERACTION_KINDS.get(_coding_code(resource, RESTFUL_INTERACTION) or "", _PLAIN)
    if action in KINDS:
        return KINDS[action]
    for prefix, kind in PREFIX_KINDS.items():
        if action and action.startswith(prefix):
            return kind
    return _PLAIN


def conform(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an exported AuditEvent in BALP's shape, ``meta.profile`` naming what it meets."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(resource))  # a deep copy, fast
    kind = kind_of(out)
    agents: list[dict[str, Any]] = out.get("agent") or []
    entities: list[dict[str, Any]] = out.get("entity") or []
    user = next((a for a in agents if a.get("requestor") is True), None)
    server = _by_text(agents, "jupyter-server")
    browser = _by_text(agents, "user-agent")
    address = _take_user_network(user)
    issuer_entity = next((e for e in entities if _issuer_of(e)), None)
    issuer = _issuer_of(issuer_entity) if issuer_entity else None
    patient = next((e for e in entities if _is_patient(e)), None)
    profiles: list[str] = []
    success = out.get("outcome") == "0"

    if kind.shape in ("read", "query", "write"):
        target = _rest_target(out, entities, issuer_entity)
        client_role = kind.client_role or (
            _DESTINATION_ROLE if kind.shape == "read" else _SOURCE_ROLE
        )
        server_role = kind.server_role or (
            _SOURCE_ROLE if kind.shape == "read" else _DESTINATION_ROLE
        )
        client = _client_agent(agents, server, out, address)
        _add_coding(client, client_role, _APPLICATION)
        if issuer:
            agents.append(
                {
                    "type": {"coding": [dict(server_role)]},
                    "who": {"identifier": {"system": ISSUER_SYSTEM, "value": issuer}},
                    "requestor": False,
                    "network": {"address": issuer, "type": _NETWORK_URI},
                }
            )
            if not issuer_entity or not issuer_entity.get("detail"):
                entities[:] = [e for e in entities if e is not issuer_entity]
        if user is not None and kind.user_type:
            _add_coding(user, kind.user_type)
        if kind.shape == "query":
            out["action"] = "E"  # BALP's Query: a search, history or operation is an Execute
            _as_query(out, target)
        else:
            target["role"] = dict(_DOMAIN_RESOURCE)
        # Patient first, the data or query entity last (as the hub's own shape has it).
        if target in entities:
            entities.remove(target)
        entities.append(target)
        out["entity"] = entities
        has_server = bool(issuer)
        has_client = "network" in client
        if success and has_server and has_client and _rest_ok(kind, target):
            profiles.append(kind.patient_profile if patient else kind.profile)  # type: ignore[arg-type]
    token = _token_hash(entities)
    if kind.shape not in ("read", "query", "write"):
        if kind.token_profile and user is not None and token and _has_who(user):
            # OAUTHaccessTokenUse.Minimal allows two agents (client and user): the
            # browser and the Jupyter server become an extension on the event.
            others = [a for a in agents if a is not user]
            folded = _fold_agents(others, address)
            if folded:
                out.setdefault("extension", []).append(folded)
            _add_coding(user, _OAUTH_USER)
            user["policy"] = [f"{TOKEN_HASH_SYSTEM}:{token}"]
            agents = [user, _hub_agent(out)]
            profiles.append(kind.token_profile)
        elif address:
            if browser is None:
                browser = {"type": {"text": "user-agent"}, "who": {"display": "client"}}
                browser["requestor"] = False
                agents.append(browser)
            browser["network"] = {"address": address, "type": _NETWORK_IP}
    out["agent"] = agents
    if profiles:
        out["meta"] = {"profile": profiles}
    return out


# ---------------------------------------------------------------- helpers
def _coding_code(resource: Mapping[str, Any], system: str) -> str | None:
    for coding in resource.get("subtype") or ():
        if isinstance(coding, Mapping) and coding.get("system") == system:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def _by_text(agents: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    return next((a for a in agents if (a.get("type") or {}).get("text") == text), None)


def _take_user_network(user: dict[str, Any] | None) -> str | None:
    """BALP: users are not network devices; the address moves to the client's agent."""
    if user is None:
        return None
    network = user.pop("network", None)
    alt_id = user.pop("altId", None)
    if alt_id and "name" not in user:
        user["name"] = alt_id
    address = network.get("address") if isinstance(network, Mapping) else None
    return address if isinstance(address, str) else None


def _issuer_of(entity: Mapping[str, Any] | None) -> str | None:
    if not entity:
        return None
    identifier = (entity.get("what") or {}).get("identifier") or {}
    if identifier.get("system") == ISSUER_SYSTEM and isinstance(identifier.get("value"), str):
        return str(identifier["value"])
    return None


def _is_patient(entity: Mapping[str, Any]) -> bool:
    role = entity.get("role") or {}
    return role.get("system") == OBJECT_ROLE and role.get("code") == "1"


def _token_hash(entities: list[dict[str, Any]]) -> str | None:
    for entity in entities:
        identifier = (entity.get("what") or {}).get("identifier") or {}
        if identifier.get("system") == TOKEN_HASH_SYSTEM and isinstance(
            identifier.get("value"), str
        ):
            return str(identifier["value"])
    return None


def _has_who(agent: Mapping[str, Any]) -> bool:
    who = agent.get("who") or {}
    return bool(who.get("identifier") or who.get("reference"))


def _add_coding(agent: dict[str, Any], *codings: Mapping[str, str]) -> None:
    concept = agent.setdefault("type", {})
    existing = concept.setdefault("coding", [])
    for coding in codings:
        if not any(
            c.get("system") == coding["system"] and c.get("code") == coding["code"]
            for c in existing
        ):
            existing.append(dict(coding))


def _site(resource: Mapping[str, Any]) -> str:
    site = (resource.get("source") or {}).get("site")
    return site if isinstance(site, str) and site else "jupyterhub-smart"


def _hub_agent(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The hub as the OAuth client of the EHR (the application holding the token)."""
    return {
        "type": {"coding": [dict(_APPLICATION)]},
        "who": {
            "identifier": {"system": HUB_SYSTEM, "value": _site(resource)},
            "display": "jupyterhub-smart hub",
        },
        "requestor": False,
    }


def _fold_agents(others: list[dict[str, Any]], address: str | None) -> dict[str, Any] | None:
    """The browser's address and user agent and the Jupyter server, as one extension."""
    parts: list[dict[str, Any]] = []
    if address:
        parts.append({"url": "network-address", "valueString": address})
    for agent in others:
        text = (agent.get("type") or {}).get("text")
        who = agent.get("who") or {}
        value = who.get("display") or (who.get("identifier") or {}).get("value")
        if isinstance(text, str) and isinstance(value, str):
            parts.append({"url": text, "valueString": value})
    return {"url": USER_CLIENT_EXTENSION, "extension": parts} if parts else None


def _client_agent(
    agents: list[dict[str, Any]],
    server: dict[str, Any] | None,
    resource: Mapping[str, Any],
    address: str | None,
) -> dict[str, Any]:
    """The FHIR client: the user's Jupyter server, or this machine for the hub's own requests."""
    if server is not None:
        client = server
        if address:
            client["network"] = {"address": address, "type": _NETWORK_IP}
        return client
    client = {"who": {"identifier": {"system": HUB_SYSTEM, "value": _site(resource)}}}
    client["requestor"] = False
    if address:
        client["network"] = {"address": address, "type": _NETWORK_IP}
    else:  # the request was made from this machine (e.g. a Bulk Data export)
        client["network"] = {"address": _site(resource), "type": _NETWORK_MACHINE_NAME}
    agents.append(client)
    return client


def _rest_target(
    resource: dict[str, Any], entities: list[dict[str, Any]], issuer_entity: Any
) -> dict[str, Any]:
    """The entity naming the data or request (the last System Object that is not the issuer)."""
    for entity in reversed(entities):
        if entity is issuer_entity or _is_patient(entity) or _token_hash([entity]):
            continue
        if (entity.get("type") or {}).get("code") == "2" and "description" not in entity:
            return entity
    target: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
    }
    entities.append(target)
    return target


def _details(target: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(d.get("type")): str(d.get("valueString"))
        for d in target.get("detail") or ()
        if isinstance(d, Mapping)
    }


def _keep_details(target: dict[str, Any]) -> None:
    """Move ``detail`` (count, HTTP status...) to an extension: BALP's query forbids detail."""
    details = target.pop("detail", None)
    if details:
        target.setdefault("extension", []).append(
            {
                "url": REST_DETAIL_EXTENSION,
                "extension": [
                    {"url": str(d.get("type")), "valueString": str(d.get("valueString"))}
                    for d in details
                ],
            }
        )


def _as_query(resource: dict[str, Any], target: dict[str, Any]) -> None:
    """BALP query entity: role Query, the request in base64 (``query``), no ``what``."""
    details = _details(target)
    interaction = details.get("interaction") or "operation"
    name = target.pop("name", None)
    what = target.pop("what", None)
    reference = (what or {}).get("reference") if isinstance(what, Mapping) else None
    params = [p for p in (details.get("search-parameter-names") or "").split(",") if p]
    if _coding_code(resource, ACTION_SYSTEM) == "bulk-export":
        path = "$export"
        _add_subtype(resource, _OPERATION)
    elif interaction == "capabilities":
        path = "metadata"
    elif interaction == "search-system":
        path = ""
    elif interaction.startswith("history"):
        path = f"{reference or name or ''}/_history".lstrip("/")
    else:
        path = str(reference or name or "")
    # Only parameter NAMES reach the hub (values could be clinical data): the query
    # records the request's shape, each name with its value withheld.
    text = path + ("?" + "&".join(f"{p}=" for p in params) if params or not path else "")
    target["query"] = base64.b64encode(text.encode("utf-8")).decode("ascii")
    target["description"] = text or interaction
    target["role"] = dict(_QUERY_ROLE)
    target.pop("lifecycle", None)
    _keep_details(target)


def _add_subtype(resource: dict[str, Any], coding: Mapping[str, str]) -> None:
    subtype = resource.setdefault("subtype", [])
    if not any(c.get("system") == coding["system"] for c in subtype):
        subtype.append(dict(coding))


def _rest_ok(kind: Kind, target: Mapping[str, Any]) -> bool:
    """Whether the data/query entity has what the profile requires."""
    if kind.shape == "query":
        return bool(target.get("query"))
    return bool((target.get("what") or {}).get("reference"))
