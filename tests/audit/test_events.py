"""Event builders: the AuditEvent shape, bad input refused with a reason, secrets kept out."""

from __future__ import annotations

import logging

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from jupyterhub_smart.audit import data_access_event, hub_event, sanitize, token_fingerprint
from jupyterhub_smart.audit.events import HUB_ACTIONS, action_of


def as_resource(event: dict) -> AuditEvent:
    return AuditEvent.model_validate(
        {"resourceType": "AuditEvent", "recorded": "2026-01-01T00:00:00Z", **event}
    )


@pytest.mark.parametrize("action", sorted(HUB_ACTIONS))
def test_every_action_is_a_valid_audit_event(action: str) -> None:
    event = hub_event(action, username="alice", patient="123", outcome="failure")
    as_resource(event)
    assert action_of(event) == action
    assert event["outcome"] == "4"
    assert event["entity"][0]["what"]["reference"] == "Patient/123"


def test_minimal_event_without_a_user() -> None:
    event = hub_event("issuer-refused", outcome="failure", issuer="https://evil.example/fhir")
    as_resource(event)
    assert event["agent"][0]["who"] == {"display": "unauthenticated"}
    assert event["entity"][0]["what"]["identifier"]["value"] == "https://evil.example/fhir"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "hack"}, "unknown audit action"),
        ({"action": "logout", "outcome": "maybe"}, "unknown audit outcome"),
        ({"action": "token-issued", "token_hash": "eyJhbGciOi.eyJzdWIi.sig"}, "hex hash"),
    ],
)
def test_hub_event_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    action = kwargs.pop("action")
    with pytest.raises(ValueError, match=message):
        hub_event(action, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interaction": "delete"}, "interaction must be one of"),
        ({"resource_type": "observation"}, "resource type name"),
        ({"resource_type": "Patient", "resource_id": "a/b"}, "FHIR id"),
        ({"search_params": ["code=1234-5"]}, "NAMES"),
        ({"search_params": ["birthdate", "1970-01-01"]}, "NAMES"),
        ({"search_params": ["x"] * 51}, "at most 50"),
        ({"count": -1}, "non-negative"),
        ({"count": True}, "non-negative"),
        ({"status": 99}, "HTTP status"),
    ],
)
def test_data_access_event_refuses_values_and_malformed_fields(kwargs: dict, message: str) -> None:
    args = {"interaction": "search-type", "resource_type": "Observation", **kwargs}
    with pytest.raises(ValueError, match=message):
        data_access_event(**args)


def test_server_error_outcome_is_serious() -> None:
    event = data_access_event(interaction="search-type", resource_type="Condition", status=503)
    assert event["outcome"] == "8"
    as_resource(event)


def test_token_fingerprint_is_salted_and_not_the_token() -> None:
    one = token_fingerprint("tok", b"s" * 16)
    assert len(one) == 64 and "tok" not in one
    assert one != token_fingerprint("tok", b"t" * 16)
    with pytest.raises(ValueError, match="salt"):
        token_fingerprint("tok", b"short")


def test_sanitize_redacts_and_names_the_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    event = hub_event("login-failed", description="client_secret=hunter2hunter2 rejected")
    event["entity"] = [{"detail": [{"type": "id_token", "valueString": "abc.def"}]}]
    event["source"]["observer"]["api_key"] = "k-123456"
    clean = sanitize(event)
    text = str(clean)
    for secret in ("hunter2hunter2", "abc.def", "k-123456"):
        assert secret not in text and secret not in caplog.text
    assert "source.observer.api_key" in caplog.text
    assert "entity[0].detail[0].valueString" in caplog.text
    # Ordinary FHIR ``code`` fields and hashes are left alone.
    ok = sanitize(hub_event("token-issued", token_hash="ab" * 32))
    assert ok["entity"][0]["what"]["identifier"]["value"] == "ab" * 32
    assert ok["subtype"][0]["code"] == "token-issued"


def test_long_text_is_clipped() -> None:
    event = sanitize(hub_event("login-failed", description="x" * 5000, user_agent="y" * 5000))
    assert len(event["outcomeDesc"]) == 1024
    assert len(event["agent"][1]["who"]["display"]) <= 512


@pytest.mark.parametrize(
    "text",
    [
        "GET /callback?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj",
        "refresh with token=8xLOxBtZp8 failed",
        "api_key=AKIAIOSFODNN7EXAMPLE rejected",
        "Authorization: Bearer mF_9.B5f-4.1JqMzz8MFzzz",
        "id token eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiIxMjMifQ.c2ln",
        "key: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
    ],
)
def test_credential_values_in_free_text_are_redacted(text: str) -> None:
    clean = sanitize(hub_event("login-failed", outcome="failure", description=text))
    assert "[redacted]" in clean["outcomeDesc"]
    for fragment in ("SplxlOBeZQ", "8xLOxBtZp8", "AKIAIOSFODNN7", "mF_9.B5f", "eyJzdWIi", "MIIEvQ"):
        assert fragment not in clean["outcomeDesc"]


def test_ordinary_text_is_left_alone() -> None:
    text = "basic authentication failed for Practitioner/7: invalid_grant (grant expired)"
    assert sanitize(hub_event("login-failed", description=text))["outcomeDesc"] == text
