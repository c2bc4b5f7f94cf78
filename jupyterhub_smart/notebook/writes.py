"""Writes: create, update, patch, delete, transaction and batch, within the granted scopes.

Every write is checked before it is sent:

* the server must declare the interaction (``create``, ``update``...) for the
  type in its CapabilityStatement (:class:`~.errors.OperationNotDeclared`);
* a granted scope must allow it: v2 ``c``/``u``/``d``, or v1 ``.write``. A
  ``patient/`` scope covers only resources in the launched patient's
  compartment (the resource's ``subject``/``patient`` is that patient), so a
  resource about someone else needs a ``user/`` or ``system/`` scope
  (:class:`~.errors.ScopeNotGranted`). The server checks again, and its refusal
  is a :class:`~.errors.FHIRError` carrying its OperationOutcome.

Every write that reached the server is an event for the audit trail, with its
status: 201/200/204 for success, the server's error status otherwise.

``prefer`` is FHIR's ``Prefer: return=`` (``representation``, the default:
the stored resource comes back; ``minimal``: only its id and version, read
from ``Location``/``ETag``; ``OperationOutcome``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..smart.fhir_rules import parse_reference
from ..smart.scopes import find_covering
from .errors import FHIRError, ScopeNotGranted
from .events import DataAccessEvent, emit, event_patient
from .http import Fetched

if TYPE_CHECKING:
    from .client import SMARTClient

__all__ = ["AUTO", "BundleResult", "EntryResult", "check_patch", "check_write"]

#: ``update(if_match=AUTO)``: lock on the resource's own ``meta.versionId`` when it has one.
AUTO = "auto"
PATCH_OPS = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}
PREFER = ("representation", "minimal", "OperationOutcome")
_LETTERS = {"create": "c", "update": "u", "patch": "u", "delete": "d", "read": "r"}
_METHOD_ACTION = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
    "GET": "read",
}


def compartment(resource: Mapping[str, Any]) -> str | None:
    """The Patient whose compartment holds ``resource`` (its own id for a Patient)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for element in ("subject", "patient"):
        value = resource.get(element)
        reference = value.get("reference") if isinstance(value, dict) else None
        if isinstance(reference, str):
            parsed = parse_reference(reference, "Patient")
            if parsed is not None:
                return parsed.id
    return None


def check_write(
    granted: Sequence[str],
    resource_type: str,
    action: str,
    launched: str | None,
    resource: Mapping[str, Any] | None = None,
    resource_id: str | None = None,
) -> None:
    """Raise :class:`ScopeNotGranted` unless a granted scope allows this write.

    Without the resource (a delete or patch by id) its compartment is unknown
    here, except for a Patient (its id); a ``patient/`` scope is then trusted
    and the server decides.
    """
    if not granted:
        return
    letter = _LETTERS[action]
    if resource is not None:
        patient: str | None = compartment(resource)
        known = True
    elif resource_type == "Patient":
        patient, known = resource_id, True
    else:
        patient, known = None, False
    inside = launched is not None and (not known or patient == launched)
    contexts = ("patient", "user", "system") if inside else ("user", "system")
    restrictions: list[tuple[str, str]] = []
    for element in ("category", "code"):
        value = (resource or {}).get(element)
        for concept in value if isinstance(value, list) else [value]:
            for coding in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    restrictions.append((element, coding["code"]))
                    restrictions.append((element, f"{coding.get('system')}|{coding['code']}"))
    if find_covering(granted, contexts, resource_type, letter, restrictions):
        return
    resource_scopes = [s for s in granted if s.startswith(("patient/", "user/", "system/"))]
    needed = [f"{c}/{resource_type}.{letter}" for c in contexts]
    reason = ""
    if launched is None and any(s.startswith("patient/") for s in resource_scopes):
        reason = " Your patient/ scopes cover nothing because this session has no patient."
    elif not inside:
        reason = (
            f" The resource is about {('Patient/' + patient) if patient else 'no patient'}, not the "
            f"launched patient ({launched}), which patient/ scopes cannot cover."
        )
    raise ScopeNotGranted(
        f"Not sent: {action} of {resource_type} needs one of {', '.join(needed)} (or a v1 "
        f".write scope); this session was granted "
        f"{', '.join(resource_scopes) if resource_scopes else 'no resource scopes'}.{reason} "
        "Ask your hub admin (or the EHR) for the scope.",
        needed=needed,
        granted=resource_scopes,
    )


def check_patch(operations: Any) -> bytes:
    """A JSON Patch (RFC 6902) as bytes, or ``ValueError`` naming the first bad operation."""
    if not isinstance(operations, list) or not operations:
        raise ValueError(
            "a JSON Patch is a non-empty list of operations ({'op': ..., 'path': ...})"
        )
    for index, op in enumerate(operations):
        if not isinstance(op, dict):
            raise ValueError(f"patch operation {index} is not an object")
        name = op.get("op")
        if name not in PATCH_OPS:
            raise ValueError(
                f"patch operation {index}: op {name!r} is not one of {', '.join(PATCH_OPS)}"
            )
        path = op.get("path")
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ValueError(f"patch operation {index}: path must be a JSON Pointer ('/status')")
        missing = [k for k in PATCH_OPS[name] if k not in op]
        if missing:
            raise ValueError(f"patch operation {index} ({name}) needs {', '.join(missing)}")
        if name in ("move", "copy") and not (
            isinstance(op["from"], str) and op["from"].startswith("/")
        ):
            raise ValueError(f"patch operation {index}: from must be a JSON Pointer")
    return orjson.dumps(operations)


def _prefer(prefer: str) -> dict[str, str]:
    if prefer not in PREFER:
        raise ValueError(f"prefer={prefer!r}: use one of {', '.join(PREFER)}")
    return {"Prefer": f"return={prefer}"}


def _result(fetched: Fetched, resource_type: str) -> dict[str, Any]:
    """The stored resource, or (``return=minimal``) its type, id and version from the headers."""
    if fetched.data.get("resourceType") == resource_type:
        return fetched.data
    location = fetched.headers.get("location", "")
    parts = location.split("/_history/")
    rid = parts[0].rstrip("/").rsplit("/", 1)[-1] if location else None
    version = (
        parts[1]
        if len(parts) == 2
        else fetched.headers.get("etag", "").removeprefix("W/").strip('"')
    )
    result: dict[str, Any] = {"resourceType": resource_type}
    if rid:
        result["id"] = rid
    if version:
        result["meta"] = {"versionId": version}
    if fetched.data.get("resourceType") == "OperationOutcome":
        result["outcome"] = fetched.data
    return result


def _emit_write(
    client: SMARTClient,
    action: str,
    resource_type: str,
    status: int,
    url: str,
    resource_id: str | None,
    patient: str | None,
    count: int = 1,
) -> None:
    token = client._last_token
    emit(
        client.event_sink,
        DataAccessEvent(
            action=action,
            resource_type=resource_type,
            fhir_base_url=(token.fhir_base_url if token else None) or client.default_base or "",
            url=url,
            status=status,
            count=count if status < 400 else 0,
            patient=patient
            if patient is not None
            else event_patient(token.patient if token else None, resource_type, resource_id, ()),
            resource_id=resource_id,
        ),
    )


def send(
    client: SMARTClient,
    action: str,
    method: str,
    path: str,
    resource_type: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    resource_id: str | None = None,
    patient: str | None = None,
    count: int = 1,
) -> Fetched:
    """Send one write; report it (success or the server's refusal) to the event sink."""
    content_type = "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
    all_headers = {
        **({"Content-Type": content_type} if body is not None else {}),
        **(headers or {}),
    }
    try:
        fetched = client.http.request(method, path, content=body, headers=all_headers)
    except FHIRError as exc:
        if exc.status is not None:
            _emit_write(
                client,
                action,
                resource_type,
                exc.status,
                exc.url or path,
                resource_id,
                patient,
                count,
            )
        raise
    client._last_token = fetched.token
    if resource_id is None and fetched.headers.get("location"):
        resource_id = fetched.headers["location"].split("/_history/")[0].rsplit("/", 1)[-1]
    _emit_write(
        client, action, resource_type, fetched.status, fetched.url, resource_id, patient, count
    )
    return fetched


def _may_write(
    client: SMARTClient,
    resource_type: str,
    action: str,
    resource: Mapping[str, Any] | None = None,
    resource_id: str | None = None,
) -> None:
    """Refuse locally what the server does not declare or the granted scopes do not allow."""
    client.capabilities.require_interaction(resource_type, action)
    info = client.provider.get()
    client._last_token = info
    if client.check_scopes:
        check_write(info.scopes, resource_type, action, info.patient, resource, resource_id)


def create(
    client: SMARTClient,
    resource: Mapping[str, Any],
    if_none_exist: str | Mapping[str, Any] | None,
    prefer: str,
) -> dict[str, Any]:
    from .client import _check_type, search_params

    resource_type = _resource_type(resource)
    _check_type(resource_type)
    headers = _prefer(prefer)
    if if_none_exist is not None:
        from urllib.parse import urlencode

        if isinstance(if_none_exist, str):
            headers["If-None-Exist"] = if_none_exist
        else:
            headers["If-None-Exist"] = urlencode(search_params(if_none_exist, {}))
    _may_write(client, resource_type, "create", resource)
    fetched = send(
        client,
        "create",
        "POST",
        resource_type,
        resource_type,
        body=orjson.dumps(resource),
        headers=headers,
        patient=compartment(resource),
    )
    return _result(fetched, resource_type)


def _resource_type(resource: Mapping[str, Any]) -> str:
    if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
        raise ValueError(
            "a resource is a dict with a resourceType (e.g. {'resourceType': 'Observation', ...})"
        )
    return str(resource["resourceType"])


def _if_match(value: str | int | None) -> dict[str, str]:
    if value is None:
        return {}
    text = str(value)
    if text.startswith(("W/", '"')):
        return {"If-Match": text}
    return {"If-Match": f'W/"{text}"'}


def update(
    client: SMARTClient, resource: Mapping[str, Any], if_match: str | int | None, prefer: str
) -> dict[str, Any]:
    from .client import _check_id, _check_type

    resource_type = _resource_type(resource)
    _check_type(resource_type)
    resource_id = resource.get("id")
    if not isinstance(resource_id, str):
        raise ValueError("update() needs the resource's id (resource['id'])")
    _check_id(resource_id)
    if if_match == AUTO:
        if_match = (resource.get("meta") or {}).get("versionId")
    headers = {**_prefer(prefer), **_if_match(if_match)}
    _may_write(client, resource_type, "update", resource)
    fetched = send(
        client,
        "update",
        "PUT",
        f"{resource_type}/{resource_id}",
        resource_type,
        body=orjson.dumps(resource),
        headers=headers,
        resource_id=resource_id,
        patient=compartment(resource),
    )
    client.etags.drop((resource_type, resource_id))
    return _result(fetched, resource_type)


def patch(
    client: SMARTClient,
    resource_type: str,
    resource_id: str,
    operations: Any,
    if_match: str | int | None,
    prefer: str,
) -> dict[str, Any]:
    from .client import _check_id, _check_type

    _check_type(resource_type)
    _check_id(resource_id)
    body = check_patch(operations)
    headers = {**_prefer(prefer), **_if_match(if_match)}
    _may_write(client, resource_type, "patch", resource_id=resource_id)
    fetched = send(
        client,
        "patch",
        "PATCH",
        f"{resource_type}/{resource_id}",
        resource_type,
        body=body,
        headers=headers,
        resource_id=resource_id,
    )
    client.etags.drop((resource_type, resource_id))
    return _result(fetched, resource_type)


def delete(
    client: SMARTClient, resource_type: str, resource_id: str, if_match: str | int | None
) -> None:
    from .client import _check_id, _check_type

    _check_type(resource_type)
    _check_id(resource_id)
    _may_write(client, resource_type, "delete", resource_id=resource_id)
    send(
        client,
        "delete",
        "DELETE",
        f"{resource_type}/{resource_id}",
        resource_type,
        headers=_if_match(if_match),
        resource_id=resource_id,
    )
    client.etags.drop((resource_type, resource_id))


@dataclass(frozen=True)
class EntryResult:
    """One entry's answer in a transaction or batch response."""

    status: int
    location: str | None = None
    etag: str | None = None
    resource: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class BundleResult:
    """A transaction or batch response: per-entry results in request order."""

    kind: str
    entries: list[EntryResult] = field(default_factory=list)
    bundle: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    @property
    def failed(self) -> list[tuple[int, EntryResult]]:
        """``(index, result)`` of each entry that failed (a batch's partial failures)."""
        return [(i, e) for i, e in enumerate(self.entries) if not e.ok]


def _entries(
    bundle_or_entries: Mapping[str, Any] | Iterable[Mapping[str, Any]], kind: str
) -> dict[str, Any]:
    if isinstance(bundle_or_entries, Mapping):
        bundle = dict(bundle_or_entries)
        if bundle.get("resourceType") != "Bundle":
            raise ValueError(f"{kind}() takes a Bundle or a list of entries")
        bundle["type"] = kind
    else:
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [dict(e) for e in bundle_or_entries],
        }
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"a {kind} needs at least one entry")
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if (
            not isinstance(request, dict)
            or request.get("method") not in _METHOD_ACTION
            or not isinstance(request.get("url"), str)
        ):
            raise ValueError(
                f"entry {index} needs request.method (POST, PUT, PATCH, DELETE, GET) and request.url"
            )
    return bundle


def _check_entries(client: SMARTClient, bundle: dict[str, Any]) -> None:
    info = client.provider.get()
    client._last_token = info
    for index, entry in enumerate(bundle["entry"]):
        request = entry["request"]
        action = _METHOD_ACTION[request["method"]]
        path = request["url"].split("?", 1)[0].strip("/")
        resource_type, _, resource_id = path.partition("/")
        try:
            if action == "read":
                client._check(info, resource_type, "r", resource_id=resource_id or None)
            else:
                resource = entry.get("resource") if action in ("create", "update") else None
                check_write(
                    info.scopes, resource_type, action, info.patient, resource, resource_id or None
                )
        except ScopeNotGranted as exc:
            raise ScopeNotGranted(
                f"entry {index} ({request['method']} {path}): {exc}",
                needed=exc.needed,
                granted=exc.granted,
            ) from None


def send_bundle(
    client: SMARTClient,
    bundle_or_entries: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    kind: str,
) -> BundleResult:
    bundle = _entries(bundle_or_entries, kind)
    client.capabilities.require_system(kind)
    if client.check_scopes and client.provider.get().scopes:
        _check_entries(client, bundle)
    fetched = send(
        client, kind, "POST", "", "Bundle", body=orjson.dumps(bundle), count=len(bundle["entry"])
    )
    results = []
    for entry in fetched.data.get("entry") or []:
        response = entry.get("response") or {}
        status_text = str(response.get("status", "0")).split(" ", 1)[0]
        results.append(
            EntryResult(
                status=int(status_text) if status_text.isdigit() else 0,
                location=response.get("location"),
                etag=response.get("etag"),
                resource=entry.get("resource"),
                outcome=response.get("outcome"),
            )
        )
    return BundleResult(kind, results, fetched.data)
