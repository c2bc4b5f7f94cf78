"""Default usernames: stable, per issuer, case-preserving, safe in URLs."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.username import default_username, issuer_slug


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
