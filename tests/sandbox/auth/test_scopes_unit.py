"""Unit tests of the sandbox's server-side reading of SMART scopes (v1 and v2)."""

from __future__ import annotations

import pytest

from jupyterhub_smart.sandbox import scopes


def test_v2_scope_parses_permissions_in_order() -> None:
    parsed = scopes.parse_resource_scope("patient/Observation.rs")
    assert parsed is not None
    assert (parsed.context, parsed.resource_type, parsed.permissions, parsed.v1) == (
        "patient",
        "Observation",
        frozenset("rs"),
        False,
    )


@pytest.mark.parametrize(("v1", "perms"), [("read", "rs"), ("write", "cud"), ("*", "cruds")])
def test_v1_permissions_map_to_v2(v1: str, perms: str) -> None:
    parsed = scopes.parse_resource_scope(f"user/*.{v1}")
    assert parsed is not None and parsed.v1
    assert parsed.permissions == frozenset(perms)


def test_v2_query_restrictions_are_kept_sorted() -> None:
    parsed = scopes.parse_resource_scope("patient/Observation.rs?code=1234-5&category=vital-signs")
    assert parsed is not None
    assert parsed.params == (("category", "vital-signs"), ("code", "1234-5"))


@pytest.mark.parametrize(
    "plain", ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "foo"]
)
def test_plain_scopes_are_not_resource_scopes(plain: str) -> None:
    assert scopes.parse_resource_scope(plain) is None


@pytest.mark.parametrize(
    "bad",
    [
        "patient/Observation.sr",  # v2 letters out of order
        "patient/Observation.",  # no permission
        "patient/observation.rs",  # lower-case type
        "patient/Observation.read?category=x",  # v1 with a query
        "patient/Observation.rs?",  # empty query
        "user/.rs",
    ],
)
def test_malformed_resource_scopes_raise(bad: str) -> None:
    with pytest.raises(scopes.ScopeError):
        scopes.parse_resource_scope(bad)


def test_split_scope_dedupes_and_caps_length() -> None:
    assert scopes.split_scope(" openid  openid patient/*.rs ") == ["openid", "patient/*.rs"]
    with pytest.raises(scopes.ScopeError):
        scopes.split_scope("a" * (scopes.MAX_SCOPE_LENGTH + 1))


def test_grantable_scopes_respect_registration() -> None:
    registered = ["openid", "patient/*.rs", "user/Patient.read"]
    requested = [
        "openid",
        "fhirUser",
        "patient/Observation.rs?category=vital-signs",
        "patient/Observation.cruds",
        "user/Patient.rs",
        "user/Observation.rs",
        "system/*.rs",
    ]
    assert scopes.grantable_scopes(requested, registered) == [
        "openid",
        "patient/Observation.rs?category=vital-signs",
        "user/Patient.rs",
    ]


def test_registered_query_restriction_is_not_widened() -> None:
    registered = ["patient/Observation.rs?category=vital-signs"]
    assert scopes.grantable_scopes(["patient/Observation.rs"], registered) == []
    assert scopes.grantable_scopes(["patient/Observation.rs?category=vital-signs"], registered) == [
        "patient/Observation.rs?category=vital-signs"
    ]


def test_unlimited_registration_grants_well_formed_requests() -> None:
    assert scopes.grantable_scopes(["openid", "patient/*.rs"], None) == ["openid", "patient/*.rs"]
    with pytest.raises(scopes.ScopeError):
        scopes.grantable_scopes(["patient/*.xyz"], None)


def test_scope_application_and_hint() -> None:
    granted = scopes.resource_scopes(
        ["openid", "patient/Observation.rs", "user/*.c", "patient/bad.x"]
    )
    assert [s.raw for s in scopes.scopes_allowing(granted, "Observation", "r")] == [
        "patient/Observation.rs"
    ]
    assert [s.raw for s in scopes.scopes_allowing(granted, "Condition", "c")] == ["user/*.c"]
    assert scopes.needed_scope_hint("patient", "Condition", "r") == "patient/Condition.r"


def test_resource_matches_params() -> None:
    vital = {"category": [{"coding": [{"system": "http://x/cat", "code": "vital-signs"}]}]}
    assert scopes.resource_matches_params(vital, (("category", "vital-signs"),))
    assert scopes.resource_matches_params(vital, (("category", "http://x/cat|vital-signs"),))
    assert not scopes.resource_matches_params(vital, (("category", "laboratory"),))
    assert not scopes.resource_matches_params(
        vital, (("status", "final"),)
    )  # unsupported: fail closed
