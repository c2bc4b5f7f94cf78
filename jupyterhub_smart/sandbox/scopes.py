"""SMART scopes as the sandbox's servers understand them (v1 and v2).

The sandbox stands apart from the client side of the project on purpose: this
module is the *server's* reading of SMART App Launch 2.x "Scopes and Launch
Context", written independently of :mod:`jupyterhub_smart.smart.scopes`, so that
a misreading shared by both sides cannot hide itself in the tests.

Resource scopes look like ``(patient|user|system)/(Type|*).(perms)[?param=value&...]``
where perms is v2 ``[c][r][u][d][s]`` (letters in that order) or v1
``read``/``write``/``*``. Every other scope (``openid``, ``fhirUser``, ``launch``,
``launch/patient``, ``offline_access`` ...) is a plain token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

CONTEXTS = ("patient", "user", "system")
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})\."
    r"(?P<perms>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.*))?$"
)
#: Non-resource scopes this sandbox knows how to grant.
IDENTITY_AND_LAUNCH_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)
#: Upper bound for a whole ``scope`` parameter; longer ones are refused, not parsed.
MAX_SCOPE_LENGTH = 4096


class ScopeError(ValueError):
    """A scope string that looks like a resource scope but is malformed."""


@dataclass(frozen=True)
class ResourceScope:
    """One parsed resource scope."""

    raw: str
    context: str
    resource_type: str
    permissions: frozenset[str]
    #: v2 query restrictions, e.g. ``(("category", "vital-signs"),)``.
    params: tuple[tuple[str, str], ...] = ()
    v1: bool = False

    def covers(self, other: ResourceScope) -> bool:
        """True when granting ``self`` already grants everything ``other`` asks for."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
            and set(self.params) <= set(other.params)
        )

    def applies_to(self, resource_type: str, interaction: str) -> bool:
        """True when this scope permits ``interaction`` (one of ``cruds``) on the type."""
        return self.resource_type in ("*", resource_type) and interaction in self.permissions


def parse_resource_scope(scope: str) -> ResourceScope | None:
    """Parse one scope; ``None`` if it is not a resource scope at all.

    Raises :class:`ScopeError` for strings that start like a resource scope
    (``patient/``, ``user/``, ``system/``) but do not follow the grammar, so
    that a typo is refused instead of silently granting nothing.
    """
    if not scope.startswith(tuple(f"{c}/" for c in CONTEXTS)):
        return None
    match = _RESOURCE_SCOPE.match(scope)
    if not match:
        if scope in IDENTITY_AND_LAUNCH_SCOPES:
            return None
        raise ScopeError(f"malformed resource scope {scope!r}")
    perms_text = match["perms"]
    if perms_text in V1_PERMISSIONS:
        permissions = frozenset(V1_PERMISSIONS[perms_text])
        v1 = True
    else:
        if not perms_text:
            raise ScopeError(f"resource scope {scope!r} names no permission")
        permissions = frozenset(perms_text)
        v1 = False
    query = match["query"]
    params: tuple[tuple[str, str], ...] = ()
    if query is not None:
        if v1:
            raise ScopeError(f"v1 scope {scope!r} cannot carry query parameters")
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=False)
        if not pairs:
            raise ScopeError(f"resource scope {scope!r} has an empty query")
        params = tuple(sorted(pairs))
    return ResourceScope(
        raw=scope,
        context=match["context"],
        resource_type=match["type"],
        permissions=permissions,
        params=params,
        v1=v1,
    )


def split_scope(scope_param: str) -> list[str]:
    """Split a space-delimited ``scope`` parameter, keeping order, dropping repeats."""
    if len(scope_param) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"scope parameter longer than {MAX_SCOPE_LENGTH} characters")
    seen: dict[str, None] = {}
    for item in scope_param.split():
        seen.setdefault(item, None)
    return list(seen)


def grantable_scopes(requested: Iterable[str], registered: Iterable[str] | None) -> list[str]:
    """The part of ``requested`` that a client registered with ``registered`` may get.

    ``registered`` of ``None`` means the client was registered without a scope
    limit: every well-formed requested scope is grantable. A requested resource
    scope is grantable when one registered resource scope covers it (so a
    client registered for ``patient/*.rs`` may get ``patient/Observation.rs``,
    and one registered for v1 ``patient/*.read`` may get v2 ``patient/Patient.rs``).
    Raises :class:`ScopeError` on a malformed requested scope.
    """
    requested_list = list(requested)
    parsed_requested = [(s, parse_resource_scope(s)) for s in requested_list]
    if registered is None:
        return [s for s, _ in parsed_requested]
    registered_list = list(registered)
    registered_resources = [
        rs for rs in (parse_resource_scope(s) for s in registered_list) if rs is not None
    ]
    registered_plain = {s for s in registered_list if parse_resource_scope(s) is None}
    granted: list[str] = []
    for scope, resource in parsed_requested:
        if resource is None:
            if scope in registered_plain:
                granted.append(scope)
        elif any(r.covers(resource) for r in registered_resources):
            granted.append(scope)
    return granted


def resource_scopes(granted: Iterable[str]) -> list[ResourceScope]:
    """Parse the resource scopes among granted scopes, skipping the others."""
    result = []
    for scope in granted:
        try:
            parsed = parse_resource_scope(scope)
        except ScopeError:
            continue
        if parsed is not None:
            result.append(parsed)
    return result


def scopes_allowing(
    granted: Iterable[ResourceScope], resource_type: str, interaction: str
) -> list[ResourceScope]:
    """The granted scopes that permit ``interaction`` on ``resource_type``."""
    return [s for s in granted if s.applies_to(resource_type, interaction)]


def needed_scope_hint(context: str, resource_type: str, interaction: str) -> str:
    """The v2 scope that would permit the interaction, for error messages."""
    return f"{context}/{resource_type}.{interaction}"


def resource_matches_params(
    resource: Mapping[str, object], params: tuple[tuple[str, str], ...]
) -> bool:
    """True when ``resource`` satisfies a v2 scope's query restrictions.

    The sandbox supports the restrictions that SMART's examples use: ``category``
    (matched against ``category[].coding[].code`` and ``system|code``) and
    ``code``. An unsupported parameter matches nothing, which fails closed.
    """
    for name, value in params:
        if name not in ("category", "code"):
            return False
        element = resource.get(name)
        concepts = element if isinstance(element, list) else [element] if element else []
        wanted = set(value.split(","))
        found = False
        for concept in concepts:
            if not isinstance(concept, Mapping):
                continue
            for coding in concept.get("coding", []) or []:
                if not isinstance(coding, Mapping):
                    continue
                code = coding.get("code")
                system = coding.get("system")
                if code in wanted or f"{system}|{code}" in wanted:
                    found = True
        if not found:
            return False
    return True
