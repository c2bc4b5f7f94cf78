"""Audit events shaped after FHIR R4 AuditEvent, and the guard that keeps secrets out.

An event is a plain dict holding the fields of an R4 AuditEvent *except*
``resourceType``, ``id`` and ``recorded`` (the log adds ``time``; the exporter
turns that into ``recorded``). Keeping the FHIR shape in the log itself means
an exported AuditEvent is the logged line, not a reinterpretation of it.

What an event may hold: who (hub username, fhirUser reference, client address,
user agent), what happened (action, outcome, a reason in words), and which
things were involved *by reference* (patient, encounter, issuer, scopes, a
salted token hash, FHIR resource types and search parameter names). Never a
token, code, secret or clinical value. :func:`sanitize` enforces this for every
event the log accepts, whoever built it: values that look like credentials are
replaced by ``[redacted]`` (the event is still recorded, so nothing is lost) and
the field's path, never its value, is logged.

Two paths to the same result. The builders here (:func:`hub_event`,
:func:`data_access_event`) apply sanitize's string rule to every value they
place as they place it (their keys and codes are this module's constants), and
seal the event with its serialisation. :func:`sanitize` then only confirms
that the event is unchanged since (one C-level ``orjson.dumps`` compared with
the seal) and returns a fresh copy of the sealed bytes, instead of walking and
copying the tree in Python (the walk was ~12 % of the hub's busy time under
token-API load). Anything else, including a built event changed after
building, nested or not, gets the full walk: keys, types, redaction, clipping.
The notebooks' reports (``POST /hub/api/smart/audit``) are built by
:func:`data_access_event` from untrusted fields, which it validates strictly
and vets like everything else it places; tests check that a built event is a
fixed point of the full walk, so the shortcut never keeps what the walk would
remove.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..smart.fhir_rules import is_fhir_id, is_resource_type, is_search_param_name

log = logging.getLogger(__name__)

#: Our code system for the ``subtype`` that names what the hub did.
ACTION_SYSTEM = "urn:jupyterhub-smart:audit-action"
#: Identifier systems for hub users, single-user servers and token hashes.
HUB_USER_SYSTEM = "urn:jupyterhub-smart:hub-user"
SERVER_SYSTEM = "urn:jupyterhub-smart:server"
TOKEN_HASH_SYSTEM = "urn:jupyterhub-smart:token-sha256"  # noqa: S105 (a URI, not a secret)
ISSUER_SYSTEM = "urn:ietf:rfc:3986"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"

_USER_AUTHENTICATION = {"system": DCM, "code": "110114", "display": "User Authentication"}
_SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
_REST = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
_LOGIN = {"system": DCM, "code": "110122", "display": "Login"}
_LOGOUT = {"system": DCM, "code": "110123", "display": "Logout"}
_AUDIT_LOG_USED = {"system": DCM, "code": "110101", "display": "Audit Log Used"}

#: Every action the hub records: (event type, extra DICOM subtype or None, AuditEvent.action).
HUB_ACTIONS: dict[str, tuple[dict[str, str], dict[str, str] | None, str]] = {
    "launch-received": (_USER_AUTHENTICATION, None, "E"),
    "issuer-refused": (_SECURITY_ALERT, None, "E"),
    "login-succeeded": (_USER_AUTHENTICATION, _LOGIN, "E"),
    "login-failed": (_USER_AUTHENTICATION, _LOGIN, "E"),
    "token-refreshed": (_USER_AUTHENTICATION, None, "E"),
    "refresh-failed": (_USER_AUTHENTICATION, None, "E"),
    "token-issued": (_USER_AUTHENTICATION, None, "E"),
    "reauthentication-required": (_USER_AUTHENTICATION, None, "E"),
    "logout": (_USER_AUTHENTICATION, _LOGOUT, "E"),
    "token-revoked": (_USER_AUTHENTICATION, None, "D"),
    # The EHR did not confirm a revocation: the grant may still be alive there.
    "token-revocation-failed": (_SECURITY_ALERT, None, "D"),
    # A blocked, no longer allowed or deleted user's EHR grant revoked and tokens dropped.
    "access-withdrawn": (_SECURITY_ALERT, None, "D"),
    "automatic-logoff": (_USER_AUTHENTICATION, _LOGOUT, "E"),
    "data-access": (_REST, None, "R"),
    # A Bulk Data export (jupyterhub_smart.bulk) started, completed, was cancelled or
    # failed: the description says which, with the level, types, group and file count.
    "bulk-export": (_REST, None, "E"),
    # Written by the log itself, about itself.
    "audit-recovered": (_SECURITY_ALERT, None, "E"),
    # The hub database stopped answering (once per outage) and answers again (how long).
    "database-unavailable": (_SECURITY_ALERT, None, "E"),
    "database-recovered": (_SECURITY_ALERT, None, "E"),
    # Alert rules (audit/alerts.py) that fired; every alert action starts with "alert".
    "alert-patient-spread": (_SECURITY_ALERT, None, "E"),
    "alert-out-of-context": (_SECURITY_ALERT, None, "E"),
    "alert-refused-tokens": (_SECURITY_ALERT, None, "E"),
    "alert-new-address": (_SECURITY_ALERT, None, "E"),
    # The hub signed the chain head (audit/checkpoint.py): the JWS travels in the details.
    "audit-checkpoint": (_AUDIT_LOG_USED, None, "E"),
    # Rotated files past retention were deleted; a signed checkpoint anchors the rest.
    "audit-retention": (_AUDIT_LOG_USED, None, "D"),
}

OUTCOMES = {"success": "0", "failure": "4"}

#: Actions that give someone access to data. If one of these cannot be
#: recorded (``AuditUnavailable``), the hub refuses the access: no audit, no data.
FAIL_CLOSED_ACTIONS: frozenset[str] = frozenset(
    {"login-succeeded", "token-refreshed", "token-issued", "data-access"}
)

#: Top-level keys an event may have (R4 AuditEvent minus what the log adds).
EVENT_KEYS: frozenset[str] = frozenset(
    {"type", "subtype", "action", "period", "outcome", "outcomeDesc", "purposeOfEvent"}
    | {"agent", "source", "entity"}
)

MAX_TEXT = 1024  #: longest free-text value kept (descriptions, user agents...)
MAX_SCOPES = 100

# Keys whose *name* says they hold a credential. FHIR's own ``code`` (in a
# Coding) is fine; ``auth_code``, ``authorization_code`` ... are not.
_SECRET_KEY = re.compile(
    r"token|secret|passw|assertion|verifier|authorization|cookie|credential|private|api_?key"
    r"|[_-]code$|^code[_-]|^jwt$|^jwk",
    re.IGNORECASE,
)
#: Keys that name a credential but hold a *hash* of it, which is the point.
_ALLOWED_SECRET_KEYS = frozenset({"token_hash"})
# Values that are credentials whatever their key: JWS/JWE compact forms, bearer
# headers, PEM blocks, and ``name=value`` pairs for well-known secret parameters.
_SECRET_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}"
    r"|-----BEGIN [A-Z ]*-----[\s\S]*?(-----END [A-Z ]*-----|$)"
    r"|(?i:[a-z_]*(token|secret|assertion|verifier|passw\w*|code|launch|key)=)[^&\s\"']+"
)
REDACTED = "[redacted]"
_HEX_HASH = re.compile(r"[0-9a-f]{32,128}")


def token_fingerprint(token: str, salt: bytes) -> str:
    """Salted hash of a token, to correlate a handed-out token with its later use.

    HMAC-SHA256 keyed with a per-hub secret ``salt`` (keep it out of the log),
    so the trail cannot be used to confirm a guessed or leaked token without
    that salt. Returns 64 hex digits.
    """
    if len(salt) < 16:
        raise ValueError("token_fingerprint needs a salt of at least 16 bytes")
    return hmac.new(salt, token.encode("utf-8"), hashlib.sha256).hexdigest()


def _might_hold_secret(text: str) -> bool:
    """Cheap pre-check so the full pattern runs only on strings that could match."""
    return "eyJ" in text or "=" in text or "-----BEGIN" in text or "bearer" in text.lower()


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _scrub(text: str) -> tuple[str, bool]:
    """Sanitize's rule for one string: credentials redacted, then clipped; True if redacted."""
    count = 0
    if _might_hold_secret(text):
        text, count = _SECRET_VALUE.subn(REDACTED, text)
    return _clip(text), count > 0


class _BuiltEvent(dict[str, Any]):
    """An event a builder of this module made, vetted as it was built, sealed with its bytes.

    The seal is the event's ``orjson`` serialisation when the builder finished.
    Any change made afterwards (top level or nested, by a caller or a test)
    makes the current serialisation differ, and :func:`sanitize` walks the
    event in full, as it does any other mapping.
    """

    __slots__ = ("_sealed",)

    def _seal(self) -> _BuiltEvent:
        self._sealed = orjson.dumps(self)
        return self

    def _intact_copy(self) -> dict[str, Any] | None:
        """A fresh copy of the vetted content if unchanged since sealing, else None."""
        sealed = getattr(self, "_sealed", None)
        if sealed is None:
            return None
        try:
            current = orjson.dumps(self)
        except TypeError:  # something unserialisable was put in: the full walk says what
            return None
        if current != sealed:
            return None
        copy: dict[str, Any] = orjson.loads(sealed)  # independent of the caller's object
        return copy


class _Vetting:
    """Applies :func:`_scrub` to each value a builder places; seals the result if it can.

    A value that is not a string (a caller passing an odd type) is left as it
    is and the event is not sealed, so the full walk judges it as before.
    """

    __slots__ = ("redacted", "sealable")

    def __init__(self) -> None:
        self.redacted: list[str] = []
        self.sealable = True

    def __call__(self, value: Any, field: str) -> Any:
        kind = type(value)
        if kind is str and len(value) <= MAX_TEXT and not _might_hold_secret(value):
            return value  # the common case, without the calls below
        if kind is not str:
            if not isinstance(value, str):
                self.sealable = False
                return value
            value = str(value)  # str subclasses (enums...) are written as plain strings
        text, hit = _scrub(value)
        if hit:
            self.redacted.append(field)
        return text

    def seal(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.redacted:
            log.warning(
                "Audit event argument(s) %s looked like credentials and were redacted "
                "(fix the caller: audit events hold references, never secrets)",
                ", ".join(dict.fromkeys(self.redacted)),
            )
        return _BuiltEvent(event)._seal() if self.sealable else event


def sanitize(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``event`` that is safe to write, or raise ``ValueError``.

    Unknown top-level keys are a programming error (they would not convert to
    an AuditEvent) and raise. Credential-looking values are redacted in place
    and the field path is logged as a warning; strings are clipped to
    :data:`MAX_TEXT` characters. An event straight from :func:`hub_event` or
    :func:`data_access_event` (vetted when built, unchanged since) is only
    copied.
    """
    if type(event) is _BuiltEvent:
        copy = event._intact_copy()
        if copy is not None:
            return copy
    if not isinstance(event, Mapping):
        raise ValueError("an audit event must be a mapping")
    unknown = sorted(str(k) for k in event.keys() - EVENT_KEYS)
    if unknown:
        raise ValueError(f"unknown audit event field(s): {', '.join(unknown)}")
    redacted: list[str] = []
    clean = _clean(event, (), redacted)
    if redacted:
        log.warning(
            "Audit event field(s) %s looked like credentials and were redacted "
            "(fix the caller: audit events hold references, never secrets)",
            ", ".join(redacted),
        )
    assert isinstance(clean, dict)
    return clean


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return key not in _ALLOWED_SECRET_KEYS and bool(_SECRET_KEY.search(key))


def _path(parts: tuple[str | int, ...]) -> str:
    """``("agent", 0, "who")`` -> ``"agent[0].who"`` (only built when something is redacted)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_EMPTY: tuple[Any, ...] = (None, "", [], {})


def _clean(value: Any, path: tuple[str | int, ...], redacted: list[str]) -> Any:
    # Hot path (every event): exact type checks first, paths built only on redaction.
    kind = type(value)
    if kind is str:
        text, hit = _scrub(value)
        if hit:
            redacted.append(_path(path))
        return text
    if kind is dict or isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"audit event key at {_path(path) or '/'} is not a string")
            if _secret_key(key) and item not in _EMPTY:
                redacted.append(_path((*path, key)))
                out[key] = REDACTED
            else:
                out[key] = _clean(item, (*path, key), redacted)
        # A FHIR ``detail`` names its own type: {"type": "access_token", "valueString": ...}.
        detail_type = out.get("type")
        if type(detail_type) is str and "valueString" in out and _SECRET_KEY.search(detail_type):
            redacted.append(_path((*path, "valueString")))
            out["valueString"] = REDACTED
        return out
    if kind is list or kind is tuple:
        return [_clean(item, (*path, i), redacted) for i, item in enumerate(value)]
    if value is None or kind is bool or kind is int or kind is float:
        return value
    if isinstance(value, str):  # str subclasses (enums...) are written as plain strings
        return _clean(str(value), path, redacted)
    if isinstance(value, (bool, int, float)):
        return (
            value
            if isinstance(value, bool)
            else (float(value) if isinstance(value, float) else int(value))
        )
    raise ValueError(
        f"audit event value at {_path(path)} has unsupported type {type(value).__name__}"
    )


def _source(vet: _Vetting) -> dict[str, Any]:
    return {
        "site": vet(_clip(socket.gethostname(), 255), "source.site"),
        "observer": {"display": "jupyterhub-smart hub"},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }


def _typed_ref(resource_type: str, ref: str) -> str:
    """``"123"`` -> ``"Patient/123"``; references and absolute URLs stay as they are."""
    return ref if "/" in ref else f"{resource_type}/{ref}"


def hub_event(
    action: str,
    *,
    outcome: str = "success",
    description: str | None = None,
    username: str | None = None,
    fhir_user: str | None = None,
    client_address: str | None = None,
    user_agent: str | None = None,
    issuer: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    scopes_requested: Sequence[str] | None = None,
    scopes_granted: Sequence[str] | None = None,
    token_hash: str | None = None,
    server_name: str | None = None,
) -> dict[str, Any]:
    """Build the AuditEvent-shaped record of one thing the hub did.

    ``action`` is one of :data:`HUB_ACTIONS`; ``outcome`` ``"success"`` or
    ``"failure"``; ``description`` is the reason in words. Every other argument
    is an identifier or a reference, never a credential; ``token_hash`` is a
    salted hash kept only to correlate a handed-out token with later use.
    Credential-looking text in any argument is redacted here (and the argument
    named in a warning), as :func:`sanitize` would.
    """
    vet = _Vetting()
    event = _hub_event(
        vet,
        action,
        outcome=outcome,
        description=description,
        username=username,
        fhir_user=fhir_user,
        client_address=client_address,
        user_agent=user_agent,
        issuer=issuer,
        patient=patient,
        encounter=encounter,
        scopes_requested=scopes_requested,
        scopes_granted=scopes_granted,
        token_hash=token_hash,
        server_name=server_name,
    )
    return vet.seal(event)


def _hub_event(
    vet: _Vetting,
    action: str,
    *,
    outcome: str,
    description: str | None,
    username: str | None,
    fhir_user: str | None,
    client_address: str | None,
    user_agent: str | None,
    issuer: str | None,
    patient: str | None,
    encounter: str | None,
    scopes_requested: Sequence[str] | None,
    scopes_granted: Sequence[str] | None,
    token_hash: str | None,
    server_name: str | None,
) -> dict[str, Any]:
    """:func:`hub_event`'s body; every value not from this module goes through ``vet``."""
    if action not in HUB_ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; expected one of {sorted(HUB_ACTIONS)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}; expected 'success' or 'failure'")
    event_type, dicom_subtype, fhir_action = HUB_ACTIONS[action]
    subtype = [{"system": ACTION_SYSTEM, "code": vet(action, "action")}]
    if dicom_subtype:
        subtype.append(dict(dicom_subtype))
    event: dict[str, Any] = {
        "type": dict(event_type),
        "subtype": subtype,
        "action": fhir_action,
        "outcome": OUTCOMES[outcome],
        "source": _source(vet),
        "agent": _agents(vet, username, fhir_user, client_address, user_agent, server_name),
    }
    if description:
        event["outcomeDesc"] = vet(description, "description")
    entity = _entities(
        vet, issuer, patient, encounter, scopes_requested, scopes_granted, token_hash
    )
    if entity:
        event["entity"] = entity
    return event


def _agents(
    vet: _Vetting,
    username: str | None,
    fhir_user: str | None,
    client_address: str | None,
    user_agent: str | None,
    server_name: str | None,
) -> list[dict[str, Any]]:
    user: dict[str, Any] = {
        "type": {"coding": [{"system": ROLE_TYPE, "code": "humanuser", "display": "human user"}]},
        "requestor": True,
    }
    who: dict[str, Any] = {}
    if username:
        name = vet(_clip(username, 255), "username")
        who["identifier"] = {"system": HUB_USER_SYSTEM, "value": name}
        user["altId"] = name
    if fhir_user:
        who["reference"] = vet(_clip(fhir_user, 512), "fhir_user")
    if not who:
        who["display"] = "unauthenticated"
    user["who"] = who
    if client_address:
        user["network"] = {
            "address": vet(_clip(client_address, 255), "client_address"),
            "type": "2",
        }
    agents = [user]
    if user_agent:
        agents.append(
            {
                "type": {"text": "user-agent"},
                "who": {"display": vet(_clip(user_agent, 512), "user_agent")},
                "requestor": False,
            }
        )
    if server_name is not None and username:
        server_id = f"{username}/{server_name}" if server_name else f"{username}/"
        agents.append(
            {
                "type": {"text": "jupyter-server"},
                "who": {
                    "identifier": {
                        "system": SERVER_SYSTEM,
                        "value": vet(_clip(server_id, 512), "server_name"),
                    }
                },
                "requestor": False,
            }
        )
    return agents


def _entities(
    vet: _Vetting,
    issuer: str | None,
    patient: str | None,
    encounter: str | None,
    scopes_requested: Sequence[str] | None,
    scopes_granted: Sequence[str] | None,
    token_hash: str | None,
) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if patient:
        entities.append(
            {
                "what": {"reference": vet(_clip(_typed_ref("Patient", patient), 512), "patient")},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if encounter:
        reference = _clip(_typed_ref("Encounter", encounter), 512)
        entities.append(
            {
                "what": {"reference": vet(reference, "encounter")},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            }
        )
    if issuer or scopes_requested is not None or scopes_granted is not None:
        detail = []
        for name, scopes in (
            ("scopes-requested", scopes_requested),
            ("scopes-granted", scopes_granted),
        ):
            if scopes is not None:
                if isinstance(scopes, str):
                    scopes = scopes.split()
                joined = " ".join(list(scopes)[:MAX_SCOPES])
                detail.append({"type": name, "valueString": vet(joined, name)})
        issuer_entity: dict[str, Any] = {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "description": "SMART authorization: issuer and scopes",
        }
        if issuer:
            issuer_entity["what"] = {
                "identifier": {"system": ISSUER_SYSTEM, "value": vet(_clip(issuer, 512), "issuer")}
            }
        if detail:
            issuer_entity["detail"] = detail
        entities.append(issuer_entity)
    if token_hash:
        if not _HEX_HASH.fullmatch(token_hash):
            raise ValueError("token_hash must be a hex hash (see token_fingerprint), not a token")
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": TOKEN_HASH_SYSTEM,
                        "value": vet(token_hash, "token_hash"),
                    }
                },
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "description": "access token, salted hash (for correlation only)",
            }
        )
    return entities


def action_of(event: Mapping[str, Any]) -> str | None:
    """The hub action code of an event (``"login-succeeded"`` ...), if it has one."""
    for coding in event.get("subtype") or ():
        if isinstance(coding, Mapping) and coding.get("system") == ACTION_SYSTEM:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


#: FHIR RESTful interactions a notebook may report, and their AuditEvent.action.
INTERACTIONS: dict[str, str] = {
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "search-type": "E",
    "search-system": "E",
    "operation": "E",
    "capabilities": "R",
    # writes a notebook made (FHIR restful-interaction codes; AuditEvent.action C/U/D/E)
    "create": "C",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "transaction": "E",
    "batch": "E",
}


def data_access_event(
    *,
    interaction: str,
    resource_type: str | None,
    search_params: Sequence[str] = (),
    count: int | None = None,
    status: int | None = None,
    resource_id: str | None = None,
    username: str | None = None,
    fhir_user: str | None = None,
    server_name: str | None = None,
    issuer: str | None = None,
    patient: str | None = None,
    client_address: str | None = None,
    user_agent: str | None = None,
) -> dict[str, Any]:
    """The record of one FHIR request made by a notebook, reported to the hub.

    Only the *shape* of the request is kept: the interaction, the resource
    type (and id for a read), the NAMES of search parameters, how many
    resources came back and the HTTP status. Values (codes, dates, names...)
    could be clinical data and are never accepted. Raises ``ValueError`` with
    the reason when a field is malformed.
    """
    if interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of {sorted(INTERACTIONS)}")
    if resource_type is not None and not is_resource_type(resource_type):
        raise ValueError("resource_type must be a FHIR resource type name such as 'Observation'")
    if resource_id is not None and not is_fhir_id(resource_id):
        raise ValueError("resource_id must be a FHIR id (letters, digits, '-', '.'; up to 64)")
    names = list(search_params)
    if len(names) > 50:
        raise ValueError("at most 50 search parameter names")
    for name in names:
        if not is_search_param_name(name):
            raise ValueError("search parameters must be parameter NAMES (e.g. 'code'), no values")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError("count must be a non-negative integer")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise ValueError("status must be an HTTP status code (100-599)")
    vet = _Vetting()
    event = _hub_event(
        vet,
        "data-access",
        outcome="failure" if status is not None and status >= 400 else "success",
        description=None,
        username=username,
        fhir_user=fhir_user,
        client_address=client_address,
        user_agent=user_agent,
        issuer=issuer,
        patient=patient,
        encounter=None,
        scopes_requested=None,
        scopes_granted=None,
        token_hash=None,
        server_name=server_name,
    )
    interaction = vet(interaction, "interaction")
    event["subtype"].append({"system": RESTFUL_INTERACTION, "code": interaction})
    event["action"] = INTERACTIONS[interaction]
    if status is not None and status >= 500:
        event["outcome"] = "8"
    detail: list[dict[str, Any]] = [{"type": "interaction", "valueString": interaction}]
    if names:
        joined = ",".join(sorted(set(names)))
        detail.append(
            {"type": "search-parameter-names", "valueString": vet(joined, "search_params")}
        )
    if count is not None:
        detail.append({"type": "count", "valueString": str(count)})
    if status is not None:
        detail.append({"type": "http-status", "valueString": str(status)})
    target: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "detail": detail,
    }
    if resource_type:
        target["name"] = vet(resource_type, "resource_type")
        if resource_id:
            reference = vet(f"{resource_type}/{resource_id}", "resource_id")
            target["what"] = {"reference": reference}
    event.setdefault("entity", []).append(target)
    return vet.seal(event)
