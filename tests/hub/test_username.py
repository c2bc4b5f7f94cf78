"""Default usernames: stable, per issuer, case-preserving, safe in URLs."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.username import colliding_issuers, default_username, issuer_slug


@pytest.mark.parametrize(
    ("issuer", "fhir_user", "sub", "expected"),
    [
        (
            "https://ehr.example.org/fhir",
            "Practitioner/123",
            None,
            "practitioner-123@ehr.example.org-fhir",
        ),
        (
            "https://ehr.example.org:8443/r4",
            "Patient/abc",
            None,
            "patient-abc@ehr.example.org-8443-r4",
        ),
        ("https://ehr.example.org/fhir", None, "user 1", None),
    ],
)
def test_usernames(
    issuer: str, fhir_user: str | None, sub: str | None, expected: str | None
) -> None:
    name = default_username(issuer, fhir_user, sub)
    if expected:
        assert name == expected
    assert "/" not in name and " " not in name and name == name.lower()
    assert name == default_username(issuer, fhir_user, sub)  # stable


def test_usernames_keep_case_sensitive_ids_apart() -> None:
    a = default_username("https://e.example/fhir", "Practitioner/Abc", None)
    b = default_username("https://e.example/fhir", "Practitioner/abc", None)
    assert a != b and a == a.lower()


def test_usernames_differ_per_issuer() -> None:
    assert default_username("https://a.example/fhir", "Practitioner/1", None) != default_username(
        "https://b.example/fhir", "Practitioner/1", None
    )
    assert issuer_slug("https://a.example/fhir") == "a.example-fhir"


def test_username_needs_an_identity() -> None:
    with pytest.raises(ValueError):
        default_username("https://a.example/fhir", None, None)


@pytest.mark.parametrize(
    ("fhir_user", "sub", "other_fhir_user", "other_sub"),
    [
        (None, "Alice", None, "alice-{hash}"),
        ("Patient/Abc", None, "Patient/abc-{hash}", None),
    ],
)
def test_an_id_spelled_like_anothers_hashed_form_gets_its_own_name(
    fhir_user: str | None, sub: str | None, other_fhir_user: str | None, other_sub: str | None
) -> None:
    iss = "https://ehr.example.org/fhir"
    first = default_username(iss, fhir_user, sub)
    suffix = first.split("@")[0].rsplit("-", 1)[1]  # the 8 hex digits the first one got
    other = default_username(
        iss,
        other_fhir_user.format(hash=suffix) if other_fhir_user else None,
        other_sub.format(hash=suffix) if other_sub else None,
    )
    assert first != other


def test_plain_ids_keep_their_names() -> None:
    """Existing users whose ids were kept as they are keep their usernames."""
    iss = "https://ehr.example.org/fhir"
    assert (
        default_username(iss, "Practitioner/123", None) == "practitioner-123@ehr.example.org-fhir"
    )
    assert default_username(iss, None, "a1b2c3d4-0000-4000-8000-123456789abc").startswith(
        "user-a1b2c3d4-0000-4000-8000-123456789abc@"
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://ehr.example.org/R4", "https://ehr.example.org/r4"),
        ("https://ehr.example.org/fhir/r4", "https://ehr.example.org/fhir-r4"),
        (
            "https://ehr.example.org/" + "x" * 130 + "/a",
            "https://ehr.example.org/" + "x" * 130 + "/b",
        ),
    ],
)
def test_issuers_sharing_usernames_are_found(a: str, b: str) -> None:
    assert colliding_issuers([a, b, "https://other.example/fhir"]) == [(a, b)]
    assert colliding_issuers([a, "https://other.example/fhir"]) == []
