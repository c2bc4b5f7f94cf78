"""Client-side SMART scopes: v1/v2 parsing, coverage, missing and covering scopes."""

from __future__ import annotations

import pytest

from jupyterhub_smart.smart.errors import ScopeError
from jupyterhub_smart.smart.scopes import (
    SMARTScope,
    find_covering,
    missing_scopes,
    parse_scope,
    parse_scopes,
    require_scopes,
    satisfied_restrictions,
    scope_covers,
)

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


@pytest.mark.parametrize(
    ("raw", "context", "rtype", "perms", "v1"),
    [
        ("patient/Observation.rs", "patient", "Observation", "rs", False),
        ("user/*.cruds", "user", "*", "cruds", False),
        ("system/Patient.r", "system", "Patient", "r", False),
        ("patient/Condition.cud", "patient", "Condition", "cud", False),
        ("patient/*.read", "patient", "*", "rs", True),
        ("user/Observation.write", "user", "Observation", "cud", True),
        ("patient/*.*", "patient", "*", "cruds", True),
    ],
)
def test_parse_resource_scopes(raw: str, context: str, rtype: str, perms: str, v1: bool) -> None:
    scope = parse_scope(raw)
    assert scope == SMARTScope(
        raw=raw,
        kind="resource",
        context=context,  # type: ignore[arg-type]
        resource_type=rtype,
        permissions=frozenset(perms),
        v1=v1,
    )
    assert scope.is_resource


def test_parse_v2_params() -> None:
    scope = parse_scope(f"patient/Observation.rs?category={LAB}&code=1234-5")
    assert scope.params == (("category", LAB), ("code", "1234-5"))
    assert scope.permits("search") and scope.permits("r") and not scope.permits("create")


@pytest.mark.parametrize(
    "raw",
    [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "offline_access",
        "https://x.org/scope",
        "__ext",
    ],
)
def test_other_scopes(raw: str) -> None:
    scope = parse_scope(raw)
    assert scope.kind == "other" and scope.context is None and not scope.permissions


@pytest.mark.parametrize(
    "raw",
    [
        "patient/Observation.rd?",  # empty query
        "patient/Observation.sr",  # wrong order
        "patient/Observation.rr",  # repeated letter
        "patient/Observation.x",
        "patient/Observation.",
        "patient/observation.rs",  # resource types start upper-case
        "patient/Observation",
        "patient/.rs",
        "user/*.read?category=x",  # v1 takes no params
        "patient/Observation.rs?category",  # param without value
        "system/Patient.Read",
    ],
)
def test_malformed_resource_scopes_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_scope(raw)


@pytest.mark.parametrize("raw", ["", "a b", 5])
def test_not_a_single_scope(raw: object) -> None:
    with pytest.raises(ValueError, match="not a single scope"):
        parse_scope(raw)  # type: ignore[arg-type]


def test_parse_scopes_string_and_list() -> None:
    parsed = parse_scopes("openid  fhirUser patient/*.rs openid")
    assert [s.raw for s in parsed] == ["openid", "fhirUser", "patient/*.rs"]
    assert [s.raw for s in parse_scopes(["openid fhirUser", "launch"])] == [
        "openid",
        "fhirUser",
        "launch",
    ]


@pytest.mark.parametrize(
    ("granted", "requested", "covered"),
    [
        ("patient/*.rs", "patient/Observation.rs", True),
        ("patient/*.rs", "patient/Observation.r", True),
        ("patient/*.read", "patient/Observation.rs", True),  # v1 grant covers v2 request
        ("patient/Observation.rs", "patient/*.read", False),
        ("patient/*.rs", "patient/*.read", True),
        ("patient/Observation.rs", "patient/*.rs", False),
        ("patient/Observation.r", "patient/Observation.rs", False),
        ("user/*.rs", "patient/Observation.rs", False),  # no context mixing
        ("patient/*.cruds", "patient/Condition.cud", True),
        ("patient/*.*", "patient/Condition.write", True),
        ("patient/Observation.rs", f"patient/Observation.rs?category={LAB}", True),
        (f"patient/Observation.rs?category={LAB}", "patient/Observation.rs", False),
        (f"patient/Observation.rs?category={LAB}", f"patient/Observation.rs?category={LAB}", True),
        ("openid", "openid", True),
        ("openid", "fhirUser", False),
        ("launch/patient", "patient/*.rs", False),
    ],
)
def test_scope_covers(granted: str, requested: str, covered: bool) -> None:
    assert scope_covers(parse_scope(granted), parse_scope(requested)) is covered


def test_missing_scopes() -> None:
    granted = "openid fhirUser launch patient/*.rs"
    assert missing_scopes(["openid", "patient/Observation.rs"], granted.split()) == []
    assert missing_scopes(
        ["openid", "offline_access", "patient/Condition.cud"], granted.split()
    ) == [
        "offline_access",
        "patient/Condition.cud",
    ]
    assert missing_scopes([], []) == []
    assert missing_scopes(["patient/*.rs"], []) == ["patient/*.rs"]
    # a malformed granted scope covers only itself, and does not break the check
    assert missing_scopes(["patient/Observation.rs"], ["patient/Observation.zz"]) == [
        "patient/Observation.rs"
    ]


def test_missing_scopes_refuses_a_typo_in_required() -> None:
    with pytest.raises(ValueError, match="malformed"):
        missing_scopes(["patient/Observation"], ["patient/*.rs"])


def test_require_scopes() -> None:
    require_scopes(["patient/Observation.rs"], ["patient/*.read"])
    with pytest.raises(ScopeError) as info:
        require_scopes(["openid", "patient/Observation.rs"], ["openid", "user/*.rs"])
    assert info.value.missing == ["patient/Observation.rs"]
    assert info.value.status == 403 and info.value.error == "insufficient_scope"
    assert "patient/Observation.rs" in str(info.value)


def test_find_covering() -> None:
    granted = [
        "openid",
        "user/Patient.rs",
        "patient/*.read",
        f"patient/Observation.c?category={LAB}",
    ]
    found = find_covering(granted, ("patient", "user"), "Observation", "search")
    assert found is not None and found.raw == "patient/*.read"
    assert find_covering(granted, "user", "Patient", "r") == parse_scope("user/Patient.rs")
    assert find_covering(granted, "user", "Observation", "r") is None
    assert find_covering(granted, ["patient"], "Observation", "create") is None
    made = find_covering(granted, ["patient"], "Observation", "c", params=[("category", LAB)])
    assert made is not None and made.raw.startswith("patient/Observation.c?")
    assert find_covering([], ["patient"], "Observation", "r") is None
    with pytest.raises(ValueError, match="unknown interaction"):
        find_covering(granted, "patient", "Observation", "rs")
    with pytest.raises(ValueError, match="unknown interaction"):
        find_covering(granted, "patient", "Observation", "history")


def test_find_covering_prefers_context_order() -> None:
    granted = ["user/Observation.rs", "patient/Observation.rs"]
    first = find_covering(granted, ("patient", "user"), "Observation", "r")
    assert first is not None and first.context == "patient"


def test_satisfied_restrictions_are_single_values_and_the_granted_system_code_form() -> None:
    granted = [
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        "not a scope",
    ]
    lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    assert satisfied_restrictions(granted, [("category", "laboratory")]) == [
        ("category", "laboratory"),
        ("category", lab),
    ]
    # an OR search may return vital signs too: it satisfies no restriction
    assert satisfied_restrictions(granted, [("category", "laboratory,vital-signs")]) == []
    searched = satisfied_restrictions(granted, [("category", "laboratory")])
    assert find_covering(granted, "patient", "Observation", "s", searched)
    assert not find_covering(granted, "patient", "Observation", "s", [("category", "laboratory")])
