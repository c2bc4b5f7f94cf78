"""What a FHIR request is, and whether the granted SMART scopes allow it.

Each request is classified from its method and path into a FHIR RESTful
interaction (read, vread, search, history, create, update, patch, delete,
operation, capabilities) on a resource type, and the proxy forwards it only if
a granted scope permits that interaction on that type
(:func:`jupyterhub_smart.smart.scopes.find_covering`, SMART v1 and v2):

* read/vread/history of an instance: ``r``; search and type/system history: ``s``;
  create: ``c``; update and patch: ``u``; delete: ``d``;
* v2 restrictions (``patient/Observation.rs?category=laboratory``) cover a
  search only when it asks for the same restriction (``category=laboratory`` or
  ``category=<system>|laboratory``), as in the notebook's own scope check; a
  write never satisfies a restriction (its body is not read), so it needs an
  unrestricted grant;
* operations: ``GET``, and ``POST`` of the read-only operations below, need
  ``r`` or ``s`` on the type (any type for system operations such as
  ``$export`` and its status and file paths); other ``POST`` operations need
  ``u``;
* ``metadata`` and ``.well-known/smart-configuration`` need no scope;
* batch/transaction Bundles (``POST`` to the base) are refused: their entries
  would each need a check of the body.

Which patient a ``patient/`` scope reaches is the EHR's to enforce; the proxy
records the patients of what comes back (:mod:`.records`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..smart.fhir_rules import is_fhir_id, is_resource_type
from ..smart.scopes import find_covering, parse_scope, satisfied_restrictions
from .errors import ProxyError

__all__ = ["READ_ONLY_OPERATIONS", "FHIRRequest", "check_scopes", "classify"]

#: Operations that read; a POST of one needs only read/search permission.
READ_ONLY_OPERATIONS = frozenset(
    {
        "$everything",
        "$export",
        "$lastn",
        "$stats",
        "$expand",
        "$lookup",
        "$validate-code",
        "$translate",
        "$subsumes",
        "$docref",
        "$summary",
        "$meta",
        "$match",
    }
)
_CONTEXTS = ("patient", "user", "system")
_ALLOWED = "GET, HEAD, POST, PUT, PATCH, DELETE"


@dataclass(frozen=True)
class FHIRRequest:
    """A classified request: its interaction, what it is about, what it needs."""

    method: str
    interaction: str
    resource_type: str | None = None
    resource_id: str | None = None
    operation: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    #: SMART permission letters any one of which allows it; empty: no scope needed.
    needs: str = ""


def _not_fhir(path: str) -> ProxyError:
    return ProxyError(
        404,
        "not_a_fhir_path",
        f"{path!r} is not a FHIR REST path (Type, Type/id, Type/id/_history[/vid], "
        "Type/_search, $operation, metadata).",
    )


def _method_error(method: str, what: str) -> ProxyError:
    return ProxyError(
        405,
        "method_not_allowed",
        f"{method} is not a FHIR interaction on {what}.",
        headers={"Allow": _ALLOWED},
    )


def _operation(method: str, name: str, rtype: str | None, rid: str | None) -> tuple[str, str]:
    """(interaction, needed letters) of an operation call."""
    if method in ("GET", "HEAD", "DELETE") or name in READ_ONLY_OPERATIONS:
        # DELETE of a Bulk Data status URL cancels the caller's own export job.
        return "operation", "rs"
    return "operation", "u"


def classify(method: str, segments: Sequence[str], query: str) -> FHIRRequest:
    """Classify a request; :class:`ProxyError` (404/405) when it is no FHIR interaction."""
    params = tuple(parse_qsl(query, keep_blank_values=True))
    method = method.upper()
    path = "/".join(segments)
    read = method in ("GET", "HEAD")
    n = len(segments)

    def made(
        interaction: str,
        needs: str,
        rtype: str | None = None,
        rid: str | None = None,
        operation: str | None = None,
    ) -> FHIRRequest:
        return FHIRRequest(method, interaction, rtype, rid, operation, params, needs)

    if n == 0:
        if read:
            return made("search-system", "s")
        raise ProxyError(
            405,
            "batch_not_supported",
            "Batch and transaction Bundles are not forwarded by the FHIR proxy: send each "
            "request on its own.",
            headers={"Allow": "GET, HEAD"},
        )
    first = segments[0]
    if path in ("metadata", ".well-known/smart-configuration"):
        if not read:
            raise _method_error(method, path)
        return made("capabilities", "")
    if first.startswith("$"):
        # A system operation ($export) and the paths it hands out ($export-status/<job>,
        # $export-file/<job>/<file>), which belong to the caller's own export.
        interaction, needs = _operation(method, first, None, None)
        return made(interaction, needs, None, None, first)
    if first == "_history":
        if n == 1 and read:
            return made("history-system", "s")
        raise _not_fhir(path)
    if not is_resource_type(first):
        raise _not_fhir(path)
    rtype = first
    if n == 1:
        if read:
            return made("search-type", "s", rtype)
        if method == "POST":
            return made("create", "c", rtype)
        raise _method_error(method, f"the type {rtype}")
    second = segments[1]
    if n == 2 and second == "_search":
        if method == "POST" or read:
            return made("search-type", "s", rtype)
        raise _method_error(method, f"{rtype}/_search")
    if n == 2 and second == "_history":
        if read:
            return made("history-type", "s", rtype)
        raise _method_error(method, f"{rtype}/_history")
    if second.startswith("$") and n == 2:
        interaction, needs = _operation(method, second, rtype, None)
        return made(interaction, needs, rtype, None, second)
    if not is_fhir_id(second):
        raise _not_fhir(path)
    rid = second
    if n == 2:
        if read:
            return made("read", "r", rtype, rid)
        if method in ("PUT", "PATCH"):
            return made("update" if method == "PUT" else "patch", "u", rtype, rid)
        if method == "DELETE":
            return made("delete", "d", rtype, rid)
        raise _method_error(method, f"{rtype}/<id>")
    third = segments[2]
    if n == 3 and third.startswith("$"):
        interaction, needs = _operation(method, third, rtype, rid)
        return made(interaction, needs, rtype, rid, third)
    if third == "_history" and read:
        if n == 3:
            return made("history-instance", "r", rtype, rid)
        if n == 4 and is_fhir_id(segments[3]):
            return made("vread", "r", rtype, rid)
    raise _not_fhir(path)


def check_scopes(granted: Sequence[str], request: FHIRRequest) -> str | None:
    """The granted scope that allows ``request`` (None if none is needed); 403 otherwise."""
    if not request.needs:
        return None
    rtype = request.resource_type or "*"
    satisfied = (
        satisfied_restrictions(granted, request.params)
        if request.interaction == "search-type"
        else []
    )
    for letter in request.needs:
        if rtype == "*":
            # System-level: any resource scope with the permission (the EHR decides the rest).
            for text in granted:
                try:
                    scope = parse_scope(text)
                except ValueError:
                    continue
                if scope.is_resource and letter in scope.permissions and not scope.params:
                    return scope.raw
            continue
        found = find_covering(granted, _CONTEXTS, rtype, letter, satisfied)
        if found is not None:
            return found.raw
    what = request.resource_type or "the server"
    letters = " or ".join(request.needs)
    resource = [s for s in granted if s.startswith(("patient/", "user/", "system/"))]
    raise ProxyError(
        403,
        "insufficient_scope",
        f"Not forwarded: {request.method} ({request.interaction}) on {what} needs a SMART "
        f"scope permitting {letters!r} on {what}; this session was granted "
        f"{', '.join(resource) if resource else 'no resource scopes'}. Restricted scopes "
        "(?category=...) cover only searches that ask for the same restriction.",
        needed=[f"{c}/{request.resource_type or '*'}.{request.needs}" for c in _CONTEXTS],
        granted=resource,
    )
