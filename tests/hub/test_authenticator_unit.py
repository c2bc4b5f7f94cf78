"""The authenticator's own decisions, in process (no network): issuer restrictions and scopes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from jupyterhub.crypto import CryptKeeper

from jupyterhub_smart.hub import SMARTAuthenticator, SMARTonFHIRAuthenticator

EHR = "https://ehr.example/fhir"


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> Iterator[SMARTAuthenticator]:
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()
    yield SMARTAuthenticator(
        issuers={EHR: {"client_id": "hub", "scope": "openid fhirUser launch/patient patient/*.rs"}},
        allow_all=True,
    )
    CryptKeeper.clear_instance()


async def test_issuer_restriction_holds_with_allow_all(auth: SMARTAuthenticator) -> None:
    assert auth.allow_all
    assert await auth.check_blocked_users("u", {"auth_state": {"iss": EHR}}) is True
    assert await auth.check_blocked_users("u", {"auth_state": {"iss": EHR + "/"}}) is True
    other = {"auth_state": {"iss": "https://other.example/fhir"}}
    assert await auth.check_blocked_users("u", other) is False
    assert await auth.check_blocked_users("u", {"auth_state": {}}) is False
    auth.blocked_users = {"u"}
    assert await auth.check_blocked_users("u", {"auth_state": {"iss": EHR}}) is False


def test_scope_for_launch_kinds(auth: SMARTAuthenticator) -> None:
    reg = auth.registration(EHR)
    assert "launch" in auth.scope_for(reg, ehr_launch=True)
    assert "launch" not in auth.scope_for(reg, ehr_launch=False)
    assert auth.scope_for(reg, ehr_launch=False) == (
        "openid",
        "fhirUser",
        "launch/patient",
        "patient/*.rs",
    )


def test_public_client_has_no_jwks_and_alias_is_the_class(auth: SMARTAuthenticator) -> None:
    assert auth.public_jwks() == {"keys": []}
    assert SMARTonFHIRAuthenticator is SMARTAuthenticator
    assert auth.enable_auth_state is True


def test_every_option_has_help() -> None:
    own = {
        name: trait
        for name, trait in SMARTAuthenticator.class_traits(config=True).items()
        if name in SMARTAuthenticator.__dict__ or name == "scope"
    }
    assert {"issuers", "default_issuer", "scope", "required_scopes", "refresh_leeway"} <= set(own)
    assert {"username_mapper", "audit_log_path", "audit_sinks", "discovery_ttl"} <= set(own)
    assert "frame_ancestors" in own
    assert all(trait.help and len(trait.help) > 20 for trait in own.values())
