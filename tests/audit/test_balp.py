"""Every kind of exported AuditEvent follows the IHE BALP profile for its kind.

Events go through the real writer, are read back, verified and exported as the
FHIR sink and `audit export` do; each resource is then checked against the
profile's required elements and fixed codes (tests/audit/balp_profiles.py,
written from the profiles' text) and validated by an independent R4 model
(fhir.resources, R4B: AuditEvent is the same in R4 and R4B).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event, token_fingerprint
from jupyterhub_smart.audit.balp import INTERACTION_KINDS, KINDS, PREFIX_KINDS, kind_of
from jupyterhub_smart.audit.events import ACTION_SYSTEM, HUB_ACTIONS, INTERACTIONS
from jupyterhub_smart.audit.export import to_audit_event
from jupyterhub_smart.audit.verify import expand_paths, iter_verified

from .balp_profiles import BALP, violations

SALT = b"0123456789abcdef0123"
ISSUER = "https://ehr.example/fhir"
USER = {"username": "alice", "fhir_user": f"{ISSUER}/Practitioner/7"}
NOTEBOOK = {**USER, "server_name": "", "client_address": "10.0.0.8", "user_agent": "python"}
BROWSER = {**USER, "client_address": "10.0.0.9", "user_agent": "Mozilla/5.0"}


#: Writes: notebooks report reads only, so a write is the event another writer would record.
WRITES = {"create": "C", "update": "U", "patch": "U", "delete": "D"}


def _access(interaction: str, status: int = 200, patient: str | None = "Patient/p1", **kw: Any):
    reported = "read" if interaction in WRITES else interaction
    event = data_access_event(
        interaction=reported, status=status, issuer=ISSUER, patient=patient, **NOTEBOOK, **kw
    )
    if interaction in WRITES:
        event = dict(event)
        event["action"] = WRITES[interaction]
        event["subtype"] = [
            {"code": interaction, "system": c["system"]} if c["code"] == "read" else c
            for c in event["subtype"]
        ]
    return event


def _token_event(action: str, **kw: Any) -> dict[str, Any]:
    return hub_event(
        action,
        issuer=ISSUER,
        token_hash=token_fingerprint("an-access-token", SALT),
        **BROWSER,
        **kw,
    )


#: (test id, event, the profile it must claim, or None when BALP has no pattern for it).
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("read", _access("read", patient=None, resource_type="Device", resource_id="d1"), "Read"),
    (
        "patient-read",
        _access("read", resource_type="Observation", resource_id="o1"),
        "PatientRead",
    ),
    ("vread", _access("vread", resource_type="Observation", resource_id="o1"), "PatientRead"),
    (
        "query",
        _access("search-type", patient=None, resource_type="Practitioner", search_params=["name"]),
        "Query",
    ),
    (
        "patient-query",
        _access(
            "search-type", resource_type="Observation", search_params=["code", "date"], count=3
        ),
        "PatientQuery",
    ),
    ("system-search", _access("search-system", patient=None, resource_type=None), "Query"),
    ("history", _access("history-type", resource_type="Observation"), "PatientQuery"),
    ("capabilities", _access("capabilities", patient=None, resource_type=None), "Query"),
    ("operation", _access("operation", resource_type="Patient"), "PatientQuery"),
    ("create", _access("create", status=201, patient=None, resource_type="Device"), None),
    (
        "create-with-id",
        _access("create", status=201, patient=None, resource_type="Device", resource_id="d2"),
        "Create",
    ),
    (
        "patient-create",
        _access("create", status=201, resource_type="Observation", resource_id="o9"),
        "PatientCreate",
    ),
    ("update", _access("update", patient=None, resource_type="Device", resource_id="d1"), "Update"),
    ("patch", _access("patch", resource_type="Observation", resource_id="o1"), "PatientUpdate"),
    ("delete", _access("delete", patient=None, resource_type="Device", resource_id="d1"), "Delete"),
    (
        "patient-delete",
        _access("delete", status=204, resource_type="Observation", resource_id="o1"),
        "PatientDelete",
    ),
    # A refused request is "recorded differently" (BALP's RESTful profiles fix outcome 0).
    (
        "read-refused",
        _access("read", status=403, resource_type="Observation", resource_id="o"),
        None,
    ),
    ("query-failed", _access("search-type", status=502, resource_type="Observation"), None),
    # The SMART launch ends with the EHR's token in the hub's hands: OAuth token use.
    (
        "smart-launch-login",
        _token_event(
            "login-succeeded",
            patient="p1",
            encounter="e1",
            scopes_requested=["openid", "launch", "patient/*.rs"],
            scopes_granted="openid launch patient/Observation.rs",
        ),
        "OAUTHaccessTokenUse.Minimal",
    ),
    (
        "token-issued",
        _token_event("token-issued", server_name="gpu"),
        "OAUTHaccessTokenUse.Minimal",
    ),
    ("token-refreshed", _token_event("token-refreshed"), "OAUTHaccessTokenUse.Minimal"),
    ("token-revoked", _token_event("token-revoked"), "OAUTHaccessTokenUse.Minimal"),
    ("launch-received", hub_event("launch-received", issuer=ISSUER, **BROWSER), None),
    ("login-failed", hub_event("login-failed", outcome="failure", issuer=ISSUER, **BROWSER), None),
    ("logout", hub_event("logout", **BROWSER), None),
    ("issuer-refused", hub_event("issuer-refused", outcome="failure", issuer=ISSUER), None),
    (
        "bulk-export",
        hub_event("bulk-export", description="completed level=system files=3", issuer=ISSUER),
        "Query",
    ),
]


def _alert() -> dict[str, Any]:
    """An alert as another module records it: its own action code, type Security Alert."""
    event = hub_event("issuer-refused", outcome="failure", **BROWSER, patient="p1")
    event = dict(event)
    event["subtype"] = [{"system": ACTION_SYSTEM, "code": "alert-many-patients"}]
    return event


CASES.append(("alert", _alert(), None))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each case written by the real writer, read back through the verifier, then exported."""
    path = tmp_path_factory.mktemp("balp") / "audit.jsonl"
    with AuditLog(path) as log:
        for _, event, _ in CASES:
            log.record_sync(event)
    entries = list(iter_verified(expand_paths([path])))
    assert len(entries) == len(CASES)
    return {
        name: to_audit_event(entry.record)
        for (name, _, _), entry in zip(CASES, entries, strict=True)
    }


@pytest.mark.parametrize(("name", "profile"), [(c[0], c[2]) for c in CASES])
def test_each_kind_follows_its_profile(
    exported: dict[str, dict[str, Any]], name: str, profile: str | None
) -> None:
    resource = exported[name]
    AuditEvent.model_validate(resource)  # R4 structure: raises on anything R4B rejects
    claimed = (resource.get("meta") or {}).get("profile") or []
    if profile is None:
        assert not [p for p in claimed if "BasicAudit.OAUTH" not in p]
        return
    url = BALP + "IHE.BasicAudit." + profile
    assert url in claimed
    for claim in claimed:  # every claim holds, not only the expected one
        assert violations(resource, claim) == [], claim


def test_user_agent_is_never_a_network_device(exported: dict[str, dict[str, Any]]) -> None:
    """BALP: the user has no network address; the address sits on the client's agent."""
    for name, resource in exported.items():
        for agent in resource["agent"]:
            if agent.get("requestor"):
                assert "network" not in agent, name
    read = exported["patient-read"]
    addresses = {a.get("network", {}).get("address") for a in read["agent"]}
    assert {"10.0.0.8", ISSUER} <= addresses


def test_query_entity_carries_the_request_shape_in_base64(
    exported: dict[str, dict[str, Any]],
) -> None:
    query = exported["patient-query"]["entity"][-1]
    assert base64.b64decode(query["query"]).decode() == "Observation?code=&date="
    assert query["description"] == "Observation?code=&date="
    # What BALP has no element for (count, HTTP status) is kept in an extension.
    detail = {e["url"]: e["valueString"] for e in query["extension"][0]["extension"]}
    assert detail["count"] == "3" and detail["http-status"] == "200"
    bulk = exported["bulk-export"]
    assert base64.b64decode(bulk["entity"][-1]["query"]) == b"$export"
    assert {"system": "http://hl7.org/fhir/restful-interaction", "code": "operation"} in bulk[
        "subtype"
    ]


def test_token_events_name_the_token_by_hash_only(exported: dict[str, dict[str, Any]]) -> None:
    login = exported["smart-launch-login"]
    (user,) = [a for a in login["agent"] if a.get("requestor")]
    assert user["policy"] == [
        "urn:jupyterhub-smart:token-sha256:" + token_fingerprint("an-access-token", SALT)
    ]
    # the browser (address, user agent) is kept, as an extension, not a third agent
    folded = {e["url"]: e["valueString"] for e in login["extension"][-1]["extension"]}
    assert folded == {"network-address": "10.0.0.9", "user-agent": "Mozilla/5.0"}
    assert "an-access-token" not in str(exported)
    patient = [e for e in login["entity"] if e.get("role", {}).get("code") == "1"]
    assert patient[0]["what"]["reference"] == "Patient/p1"


def test_logout_keeps_the_dicom_user_authentication_codes(
    exported: dict[str, dict[str, Any]],
) -> None:
    logout = exported["logout"]
    assert logout["type"]["code"] == "110114"
    assert {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110123"} in [
        {k: c[k] for k in ("system", "code")} for c in logout["subtype"]
    ]
    browser = [a for a in logout["agent"] if a.get("type", {}).get("text") == "user-agent"]
    assert browser[0]["network"]["address"] == "10.0.0.9"


def test_every_action_and_interaction_has_a_mapping_entry() -> None:
    """The mapping is a table: a new action without an entry fails here."""
    # An action without an entry claims no profile (plain): harmless for an event about
    # the hub itself, wrong for one about data or tokens, which must have its entry.
    unmapped = {
        action
        for action, (event_type, _, _) in HUB_ACTIONS.items()
        if action != "data-access"
        and action not in KINDS
        and not any(action.startswith(prefix) for prefix in PREFIX_KINDS)
        and (event_type["code"] == "rest" or "token" in action or "login" in action)
    }
    assert unmapped == set()
    assert set(INTERACTIONS) <= set(INTERACTION_KINDS)
    assert "alert" in PREFIX_KINDS
    alert = to_audit_event(
        {**_alert(), "log_id": "0" * 32, "seq": 1, "time": "2026-01-01T00:00:00+00:00"}
        | {"prev": "0" * 64, "hash": "0" * 64}
    )
    assert kind_of(alert) is PREFIX_KINDS["alert"]
    AuditEvent.model_validate(alert)
