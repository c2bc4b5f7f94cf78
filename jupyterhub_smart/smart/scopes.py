"""SMART scopes on the client side: parse v1 and v2, decide what a grant covers.

An EHR may grant less than was asked (SMART App Launch: "the granted scope may
differ from the requested scope"), so the hub compares what it got with what it
requires, and the notebook client can tell, before a request, which granted
scope (if any) permits it. This module is written independently of the
sandbox's server-side reading (:mod:`jupyterhub_smart.sandbox.scopes`) on
purpose: a misreading shared by both sides would hide itself in the tests.

Grammar (SMART App Launch 2.x, "Scopes and Launch Context")::

    (patient|user|system)/(ResourceType|*).(cruds-subset-in-order | read | write | *)[?param=value&...]

v1 suffixes map to v2 permissions: ``read`` = ``rs``, ``write`` = ``cud``,
``*`` = ``cruds``. Everything else (``openid``, ``fhirUser``, ``launch``,
``launch/patient``, ``offline_access``, extension URIs) is an "other" scope,
compared verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, cast
from urllib.parse import parse_qsl

from .errors import ScopeError, safe_text

__all__ = [
    "SMARTScope",
    "find_covering",
    "missing_scopes",
    "parse_scope",
    "parse_scopes",
    "require_scopes",
    "satisfied_restrictions",
    "scope_covers",
]

Context = Literal["patient", "user", "system"]
_CONTEXTS = ("patient", "user", "system")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_V2_LETTERS = "cruds"
_INTERACTIONS = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
_RESOURCE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z0-9]*)\.(?P<perms>[^?]*)(?:\?(?P<query>.*))?",
    re.DOTALL,
)


@dataclass(frozen=True)
class SMARTScope:
    """One parsed scope."""

    raw: str
    kind: Literal["resource", "other"]
    context: Context | None = None
    resource_type: str | None = None
    #: v2 permission letters (``{"r", "s"}``); v1 suffixes are mapped.
    permissions: frozenset[str] = frozenset()
    #: v2 restrictions, sorted (``(("category", "laboratory"),)``).
    params: tuple[tuple[str, str], ...] = ()
    v1: bool = False

    @property
    def is_resource(self) -> bool:
        return self.kind == "resource"

    def permits(self, interaction: str) -> bool:
        """True when the permissions include ``interaction`` (a letter or a name)."""
        return _INTERACTIONS.get(interaction, interaction) in self.permissions


def _v2_permissions(text: str) -> frozenset[str] | None:
    """``"rs"`` -> {r, s}; None unless a non-empty subset of ``cruds`` in that order."""
    if not text:
        return None
    position = 0
    for letter in text:
        found = _V2_LETTERS.find(letter, position)
        if found < 0:
            return None
        position = found + 1
    return frozenset(text)


def parse_scope(s: str) -> SMARTScope:
    """Parse one scope. ValueError for a malformed resource scope.

    A string that starts like a resource scope (``patient/``, ``user/``,
    ``system/``) but breaks the grammar is an error rather than an "other"
    scope, so that a typo in configuration (``patient/Observation.rd``) is
    reported instead of silently never matching.
    """
    if not isinstance(s, str):
        raise ValueError(f"{safe_text(s)!r} is not a single scope")
    return _parse_scope(s)


@lru_cache(maxsize=4096)
def _parse_scope(s: str) -> SMARTScope:
    """:func:`parse_scope` of a string, memoised: the FHIR proxy checks a session's
    granted scopes on every request (a result is frozen; errors are not cached)."""
    if not s or any(c.isspace() for c in s):
        raise ValueError(f"{safe_text(s)!r} is not a single scope")
    if not s.startswith(tuple(f"{c}/" for c in _CONTEXTS)):
        return SMARTScope(raw=s, kind="other")
    match = _RESOURCE.fullmatch(s)
    if match is None:
        raise ValueError(f"malformed SMART resource scope {safe_text(s)!r}")
    perms_text = match["perms"]
    v1 = perms_text in _V1
    permissions = frozenset(_V1[perms_text]) if v1 else _v2_permissions(perms_text)
    if permissions is None:
        raise ValueError(
            f"SMART scope {safe_text(s)!r}: permissions must be read, write, * or letters of 'cruds' in order"
        )
    params: tuple[tuple[str, str], ...] = ()
    query = match["query"]
    if query is not None:
        if v1:
            raise ValueError(f"SMART scope {safe_text(s)!r}: v1 scopes take no parameters")
        pairs = parse_qsl(query, keep_blank_values=True)
        if not pairs or any(not k or not v for k, v in pairs):
            raise ValueError(f"SMART scope {safe_text(s)!r}: malformed parameters")
        params = tuple(sorted(set(pairs)))
    return SMARTScope(
        raw=s,
        kind="resource",
        context=cast(Context, match["context"]),
        resource_type=match["type"],
        permissions=permissions,
        params=params,
        v1=v1,
    )


def _items(s: str | Iterable[str]) -> list[str]:
    if isinstance(s, str):
        return s.split()
    out: list[str] = []
    for item in s:
        out.extend(item.split())
    return out


def parse_scopes(s: str | Iterable[str]) -> list[SMARTScope]:
    """Parse a space-separated scope string (or a list); repeats dropped, order kept."""
    return [parse_scope(item) for item in dict.fromkeys(_items(s))]


def _parse_lenient(items: Iterable[str]) -> list[SMARTScope]:
    """Parse granted scopes; a malformed one becomes an "other" scope that covers only itself."""
    result = []
    for item in dict.fromkeys(_items(items)):
        try:
            result.append(parse_scope(item))
        except ValueError:
            result.append(SMARTScope(raw=item, kind="other"))
    return result


def scope_covers(granted: SMARTScope, requested: SMARTScope) -> bool:
    """True when holding ``granted`` gives everything ``requested`` asks for.

    Resource scopes: same context, the granted type is ``*`` or the same type,
    the requested permissions are a subset, and every restriction on the
    granted scope is also on the requested one (a grant limited to
    ``?category=laboratory`` does not cover an unrestricted request; an
    unrestricted grant covers a restricted request). Other scopes: equal text.
    """
    if granted.kind != "resource" or requested.kind != "resource":
        return granted.raw == requested.raw
    return (
        granted.context == requested.context
        and granted.resource_type in ("*", requested.resource_type)
        and requested.permissions <= granted.permissions
        and set(granted.params) <= set(requested.params)
    )


def missing_scopes(required: Iterable[str], granted: Iterable[str]) -> list[str]:
    """The required scopes that no granted scope covers (verbatim or by :func:`scope_covers`).

    ``required`` is configuration and is parsed strictly (ValueError on a typo);
    ``granted`` comes from the EHR and is parsed leniently.
    """
    wanted = parse_scopes(list(required))
    have = _parse_lenient(list(granted))
    raw_have = {g.raw for g in have}
    return [
        r.raw for r in wanted if r.raw not in raw_have and not any(scope_covers(g, r) for g in have)
    ]


def require_scopes(required: Iterable[str], granted: Iterable[str]) -> None:
    """Raise :class:`ScopeError` (403) listing the required scopes that were not granted."""
    missing = missing_scopes(required, granted)
    if missing:
        raise ScopeError(
            "The EHR did not grant the required scope(s): "
            + " ".join(safe_text(m, 200) for m in missing),
            missing=missing,
        )


def find_covering(
    granted: Iterable[str],
    context_candidates: Sequence[str] | str,
    resource_type: str,
    interaction: str,
    params: Iterable[tuple[str, str]] | None = None,
) -> SMARTScope | None:
    """The first granted resource scope that permits an interaction, or None.

    ``context_candidates`` are tried in order (e.g. ``("patient", "user")``);
    ``interaction`` is a letter of ``cruds`` or its name (``"search"``);
    ``params`` are the restrictions the request satisfies (e.g. it searches
    ``category=laboratory``): a restricted grant applies only when the request
    carries the same restrictions.
    """
    letter = _INTERACTIONS.get(interaction, interaction)
    if letter not in _V2_LETTERS or len(letter) != 1:
        raise ValueError(f"unknown interaction {safe_text(interaction)!r}")
    contexts = (
        (context_candidates,) if isinstance(context_candidates, str) else tuple(context_candidates)
    )
    request_params = set(params or ())
    scopes = [s for s in _parse_lenient(list(granted)) if s.kind == "resource"]
    for context in contexts:
        for scope in scopes:
            if (
                scope.context == context
                and scope.resource_type in ("*", resource_type)
                and letter in scope.permissions
                and set(scope.params) <= request_params
            ):
                return scope
    return None


def satisfied_restrictions(
    granted: Iterable[str], params: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The v2 restrictions (``?category=...``) a request's parameters satisfy, for :func:`find_covering`.

    A parameter with one value satisfies itself; a comma-separated value (an OR
    search) satisfies nothing, since some of its results may fall outside the
    restriction. A granted restriction written ``system|code`` is also satisfied
    by the bare ``code`` the request names, so it is added in the granted form.
    """
    satisfied = [(k, v) for k, v in params if "," not in v]
    for text in granted:
        try:
            scope = parse_scope(text)
        except ValueError:
            continue
        for name, value in scope.params:
            code = value.rsplit("|", 1)[-1]
            if any(k == name and v in (value, code) for k, v in satisfied):
                satisfied.append((name, value))
    return satisfied
