"""Event builders: the AuditEvent shape, bad input refused with a reason, secrets kept out."""

from __future__ import annotations

import logging

import orjson
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
        ({"interaction": "expunge"}, "interaction must be one of"),
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


# --- the builders' shortcut through sanitize ------------------------------------------

JWT = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
BEARER = "Authorization: Bearer mF_9.B5f-4.1JqMzz8MFzzzzzz"

#: Credential-looking text in every argument a builder takes (the fragments must go).
HOSTILE_HUB_EVENT = {
    "description": f"refresh failed for token={JWT}",
    "username": f"alice?code=SplxlOBeZQQYbYS6WxSbIA{'x' * 300}",
    "fhir_user": f"Practitioner/{JWT}",
    "client_address": "10.0.0.1 client_secret=hunter2hunter2",
    "user_agent": BEARER + " " + "y" * 5000,
    "issuer": "https://ehr.example/fhir?api_key=AKIAIOSFODNN7EXAMPLE",
    "patient": f"Patient/{JWT}",
    "encounter": "e1 -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
    "scopes_requested": ["openid", f"launch={JWT}"],
    "scopes_granted": "patient/*.rs password=swordfish1",
    "server_name": "lab password=swordfish2",
}
FRAGMENTS = (
    "eyJzdWIi",
    "SplxlOBeZQ",
    "hunter2",
    "mF_9.B5f",
    "AKIAIOSFODNN7",
    "MIIEvQ",
    "swordfish",
)


def plain(event: dict) -> dict:
    """The event's content as a plain dict: what any other caller would hand to sanitize."""
    return orjson.loads(orjson.dumps(event))


def built_events() -> list[dict]:
    return [
        hub_event("login-failed", outcome="failure", **HOSTILE_HUB_EVENT),
        hub_event("token-issued", username="alice", token_hash="ab" * 32, server_name=""),
        hub_event("issuer-refused", outcome="failure", issuer="https://evil.example/fhir"),
        data_access_event(
            interaction="read",
            resource_type="Patient",
            resource_id="eyJhbGciOi.eyJzdWIiOiJh.c2ln",  # a valid FHIR id shaped like a JWS
            status=200,
            patient=f"Patient/{JWT}",
            username="bob",
            server_name="",
            user_agent=BEARER,
            client_address="127.0.0.1",
            fhir_user="Practitioner/7",
            issuer="https://ehr.example/fhir",
        ),
        data_access_event(
            interaction="search-type",
            resource_type="Observation",
            search_params=["code", "patient", "_count"],
            count=3,
            status=503,
        ),
    ]


def test_built_events_are_fixed_points_of_the_full_walk(caplog: pytest.LogCaptureFixture) -> None:
    """The shortcut keeps nothing the full walk would remove: the walk finds nothing to do."""
    caplog.set_level(logging.WARNING)
    for event in built_events():
        content = plain(event)
        assert sanitize(content) == content  # full walk: nothing to redact or clip
        assert sanitize(event) == content  # shortcut: the same record
        as_resource(sanitize(event))
    text = orjson.dumps([sanitize(e) for e in built_events()]).decode() + caplog.text
    for fragment in FRAGMENTS:
        assert fragment not in text
    for argument in ("description", "username", "user_agent", "patient", "resource_id"):
        assert argument in caplog.text  # the warning names the argument, never the value


def test_built_events_redact_and_clip_like_sanitize() -> None:
    event = sanitize(hub_event("login-failed", outcome="failure", **HOSTILE_HUB_EVENT))
    assert event["outcomeDesc"] == "refresh failed for [redacted]"
    assert event["agent"][1]["who"]["display"].startswith("Authorization: [redacted]")
    assert len(event["agent"][1]["who"]["display"]) <= 512
    assert len(event["agent"][0]["altId"]) <= 255
    assert event["entity"][0]["what"]["reference"] == "Patient/[redacted]"


def test_a_built_event_changed_afterwards_gets_the_full_walk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    event = hub_event("token-issued", username="alice")
    assert sanitize(event) == plain(event)
    event["agent"][0]["who"]["display"] = BEARER  # nested: the seal no longer matches
    assert "mF_9" not in str(sanitize(event))
    assert "agent[0].who.display" in caplog.text
    event = hub_event("token-issued", username="alice")
    event["agent"][0]["network"] = {"address": object()}
    with pytest.raises(ValueError, match="unsupported type"):
        sanitize(event)
    event = hub_event("token-issued", username="alice")
    event["recorded"] = "2026-01-01"
    with pytest.raises(ValueError, match="unknown audit event field"):
        sanitize(event)
    copied = dict(hub_event("logout", username="alice"))  # a copy is any other mapping
    copied["outcomeDesc"] = f"bye {JWT}"
    assert "eyJzdWIi" not in str(sanitize(copied))


def test_sanitize_returns_a_record_independent_of_the_event() -> None:
    event = hub_event("logout", username="alice")
    clean = sanitize(event)
    event["agent"][0]["altId"] = "mallory"
    clean["agent"][0]["who"]["identifier"]["value"] = "eve"
    again = sanitize(event)  # changed: full walk, and the earlier record is untouched
    assert clean["agent"][0]["altId"] == "alice" and again["agent"][0]["altId"] == "mallory"
    assert again["agent"][0]["who"]["identifier"]["value"] == "alice"


def test_odd_argument_types_still_meet_the_full_walk() -> None:
    """A non-string description is not vetted by the builder: the walk judges it as before."""
    assert sanitize(hub_event("logout", description=5))["outcomeDesc"] == 5  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported type"):
        sanitize(hub_event("logout", description=ValueError("x")))  # type: ignore[arg-type]
