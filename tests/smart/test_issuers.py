"""Issuer normalisation and the allow-list (no network, ever)."""

from __future__ import annotations

from typing import Any

import pytest

from jupyterhub_smart.smart.errors import UnknownIssuer
from jupyterhub_smart.smart.issuers import (
    IssuerPolicy,
    IssuerRegistration,
    normalize_issuer,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir"),
        ("https://ehr.example.org/fhir/", "https://ehr.example.org/fhir"),
        ("https://ehr.example.org/fhir///", "https://ehr.example.org/fhir"),
        ("HTTPS://EHR.Example.ORG/fhir", "https://ehr.example.org/fhir"),
        ("https://ehr.example.org:443/fhir", "https://ehr.example.org/fhir"),
        ("http://ehr.example.org:80/fhir", "http://ehr.example.org/fhir"),
        ("https://ehr.example.org:8443/fhir", "https://ehr.example.org:8443/fhir"),
        ("http://127.0.0.1:8700/fhir", "http://127.0.0.1:8700/fhir"),
        ("https://ehr.example.org/FHIR/R4", "https://ehr.example.org/FHIR/R4"),
        ("https://ehr.example.org", "https://ehr.example.org"),
        ("https://ehr.example.org/", "https://ehr.example.org"),
        ("http://[::1]:8700/fhir", "http://[::1]:8700/fhir"),
    ],
)
def test_normalize_issuer(given: str, expected: str) -> None:
    assert normalize_issuer(given) == expected


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("", "No issuer"),
        ("ftp://ehr.example.org/fhir", "not an http(s) URL"),
        ("javascript:alert(1)", "not an http(s) URL"),
        ("ehr.example.org/fhir", "not an http(s) URL"),
        ("https://user:pw@ehr.example.org/fhir", "user information"),
        ("https://ehr.example.org@evil.example/fhir", "user information"),
        ("https://ehr.example.org/fhir#frag", "fragment"),
        ("https://ehr.example.org/fhir#", "fragment"),
        ("https://ehr.example.org/fhir?x=1", "query"),
        ("https://ehr.example.org/fhir?", "query"),
        ("https:///fhir", "no host"),
        ("https://ehr.example.org:99999/fhir", "not a valid URL"),
        ("https://ehr.example.org/fh ir", "whitespace or control"),
        ("https://ehr.example.org/fhir\r\nX-Injected: 1", "whitespace or control"),
        ("https://ehr.example.org/" + "a" * 3000, "longer than"),
    ],
)
def test_normalize_issuer_refuses(given: str, words: str) -> None:
    with pytest.raises(UnknownIssuer) as info:
        normalize_issuer(given)
    assert words in str(info.value)
    assert info.value.status == 400
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_non_string_issuer_refused() -> None:
    with pytest.raises(UnknownIssuer):
        normalize_issuer(None)  # type: ignore[arg-type]


ISSUERS: dict[str, dict[str, Any]] = {
    "https://ehr.example.org/fhir/": {"client_id": "hub", "client_auth": "public"},
    "https://other.example.org/R4": {
        "client_id": "hub2",
        "client_auth": "client_secret_basic",
        "client_secret": "s3cret-value",
        "scope": "openid fhirUser launch",
    },
    "https://jwt.example.org/fhir": {
        "client_id": "hub3",
        "client_auth": "private_key_jwt",
        "private_key_path": "/etc/jupyterhub/key.pem",
        "key_id": "k1",
        "signing_alg": "ES384",
        "scope": ["openid", "fhirUser", "openid"],
    },
}


def test_policy_lookup_normalises() -> None:
    policy = IssuerPolicy(ISSUERS)
    reg = policy.get("HTTPS://ehr.example.org:443/fhir")
    assert reg == IssuerRegistration(
        issuer="https://ehr.example.org/fhir", client_id="hub", client_auth="public"
    )
    assert "https://ehr.example.org/fhir/" in policy
    assert "https://evil.example/fhir" not in policy
    assert "not a url" not in policy
    assert 42 not in policy  # type: ignore[operator]
    assert policy.issuers == [
        "https://ehr.example.org/fhir",
        "https://other.example.org/R4",
        "https://jwt.example.org/fhir",
    ]
    assert len(policy) == 3 and len(policy.registrations()) == 3
    assert policy.get("https://other.example.org/R4").scope == ("openid", "fhirUser", "launch")
    jwt_reg = policy.get("https://jwt.example.org/fhir")
    assert jwt_reg.scope == ("openid", "fhirUser")
    assert jwt_reg.signing_alg == "ES384" and jwt_reg.key_id == "k1"


def test_policy_path_case_matters() -> None:
    policy = IssuerPolicy(ISSUERS)
    with pytest.raises(UnknownIssuer):
        policy.get("https://other.example.org/r4")


def test_unknown_issuer_message_names_it() -> None:
    policy = IssuerPolicy(ISSUERS)
    with pytest.raises(UnknownIssuer) as info:
        policy.get("https://evil.example/fhir/")
    assert "https://evil.example/fhir" in str(info.value)
    assert "not registered" in str(info.value)
    assert info.value.error == "unknown_issuer"


def test_registration_repr_hides_secret() -> None:
    reg = IssuerPolicy(ISSUERS).get("https://other.example.org/R4")
    assert "s3cret-value" not in repr(reg)
    assert reg.client_secret == "s3cret-value"


def test_client_auth_inferred() -> None:
    policy = IssuerPolicy(
        {
            "https://a.example/fhir": {"client_id": "a"},
            "https://b.example/fhir": {"client_id": "b", "client_secret": "x"},
            "https://c.example/fhir": {"client_id": "c", "private_key_path": "/k.pem"},
        }
    )
    assert [r.client_auth for r in policy.registrations()] == [
        "public",
        "client_secret_basic",
        "private_key_jwt",
    ]


@pytest.mark.parametrize(
    ("issuers", "words"),
    [
        ({"https://a.example/fhir": "hub"}, "must be a dict"),
        ({"https://a.example/fhir": {}}, "['client_id'] must be a non-empty string"),
        ({"https://a.example/fhir": {"client_id": ""}}, "client_id"),
        (
            {"https://a.example/fhir": {"client_id": "a", "clientid": "x"}},
            "unknown key(s) ['clientid']",
        ),
        ({"https://a.example/fhir": {"client_id": "a", "client_auth": "basic"}}, "client_auth"),
        (
            {"https://a.example/fhir": {"client_id": "a", "client_auth": "client_secret_basic"}},
            "needs 'client_secret'",
        ),
        (
            {"https://a.example/fhir": {"client_id": "a", "client_auth": "private_key_jwt"}},
            "needs 'private_key_path'",
        ),
        (
            {
                "https://a.example/fhir": {
                    "client_id": "a",
                    "client_auth": "public",
                    "client_secret": "x",
                }
            },
            "'client_secret' is set but client_auth is 'public'",
        ),
        (
            {
                "https://a.example/fhir": {
                    "client_id": "a",
                    "client_auth": "client_secret_basic",
                    "client_secret": "x",
                    "private_key_path": "/k.pem",
                }
            },
            "'private_key_path' is set",
        ),
        (
            {
                "https://a.example/fhir": {
                    "client_id": "a",
                    "private_key_path": "/k",
                    "signing_alg": "RS256",
                }
            },
            "signing_alg",
        ),
        (
            {"https://a.example/fhir": {"client_id": "a", "signing_alg": "RS384"}},
            "only applies",
        ),
        ({"https://a.example/fhir": {"client_id": "a", "key_id": 3}}, "key_id"),
        ({"https://a.example/fhir": {"client_id": "a", "client_secret": 3}}, "client_secret"),
        ({"https://a.example/fhir": {"client_id": "a", "scope": 3}}, "scope"),
        ({"https://a.example/fhir": {"client_id": "a", "scope": ["a b"]}}, "not a single scope"),
        ({"https://a.example/fhir": {"client_id": "a", "scope": ""}}, "is empty"),
        ({"ftp://a.example/fhir": {"client_id": "a"}}, "not an http(s) URL"),
        ({"http://a.example/fhir": {"client_id": "a"}}, "plain http"),
        (
            {
                "https://a.example/fhir": {"client_id": "a"},
                "https://A.example/fhir/": {"client_id": "b"},
            },
            "same issuer",
        ),
    ],
)
def test_policy_refuses_bad_configuration(issuers: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError) as info:
        IssuerPolicy(issuers)
    assert words in str(info.value)


def test_policy_not_a_mapping() -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        IssuerPolicy(["https://a.example/fhir"])  # type: ignore[arg-type]


def test_config_error_never_shows_secret() -> None:
    with pytest.raises(ValueError) as info:
        IssuerPolicy(
            {
                "https://a.example/fhir": {
                    "client_id": "a",
                    "client_auth": "public",
                    "client_secret": "TOPSECRET",
                }
            }
        )
    assert "TOPSECRET" not in str(info.value)


def test_insecure_http_allowed_on_loopback_or_when_asked() -> None:
    assert "http://127.0.0.1:8700/fhir" in IssuerPolicy(
        {"http://127.0.0.1:8700/fhir": {"client_id": "a"}}
    )
    policy = IssuerPolicy(
        {"http://ehr.internal/fhir": {"client_id": "a"}}, allow_insecure_http=True
    )
    assert policy.issuers == ["http://ehr.internal/fhir"]
