"""The front channel: authorization URL, RFC 9207 issuer check, error wording."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest

from jupyterhub_smart.smart.authorize import (
    AuthorizationResponseError,
    authorization_error,
    authorization_url,
    check_response_issuer,
)
from jupyterhub_smart.smart.discovery import SMARTConfiguration
from jupyterhub_smart.smart.pkce import code_challenge_s256, new_code_verifier


@pytest.fixture
def config(smart_config: Callable[..., SMARTConfiguration]) -> SMARTConfiguration:
    """An EHR whose authorize URL has a query of its own and that sends ``iss`` (RFC 9207)."""
    return smart_config(
        authorization_endpoint="https://ehr.example.org/auth/authorize?tenant=a&scope=ignored",
        authorization_response_iss_parameter_supported=True,
    )


def test_authorization_url(config: SMARTConfiguration) -> None:
    challenge = code_challenge_s256(new_code_verifier())
    url = authorization_url(
        config,
        client_id="hub",
        redirect_uri="https://hub.example.org/hub/oauth_callback",
        scope="openid fhirUser launch",
        state="s1",
        code_challenge=challenge,
        nonce="n1",
        launch="L 1&x",
    )
    parts = urlsplit(url)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://ehr.example.org/auth/authorize"
    )
    query = {k: v for k, v in parse_qs(parts.query).items()}
    assert query == {
        "tenant": ["a"],
        "response_type": ["code"],
        "client_id": ["hub"],
        "redirect_uri": ["https://hub.example.org/hub/oauth_callback"],
        "scope": ["openid fhirUser launch"],
        "state": ["s1"],
        "aud": ["https://ehr.example.org/fhir"],
        "code_challenge": [challenge],
        "code_challenge_method": ["S256"],
        "nonce": ["n1"],
        "launch": ["L 1&x"],
    }


def test_authorization_url_without_optional_parts(config: SMARTConfiguration) -> None:
    url = authorization_url(
        replace(config, authorization_endpoint="https://ehr.example.org/auth/authorize"),
        client_id="hub",
        redirect_uri="https://h/cb",
        scope="launch/patient",
        state="s",
        code_challenge="c",
        aud="https://other.example.org/fhir",
    )
    query = parse_qs(urlsplit(url).query)
    assert "nonce" not in query and "launch" not in query
    assert query["aud"] == ["https://other.example.org/fhir"]


def test_response_issuer_matches(config: SMARTConfiguration) -> None:
    check_response_issuer(config, "https://ehr.example.org/auth")


@pytest.mark.parametrize(
    "iss",
    ["https://evil.example/auth", "https://ehr.example.org/fhir", "https://ehr.example.org/auth/"],
)
def test_response_issuer_mix_up_refused(config: SMARTConfiguration, iss: str) -> None:
    with pytest.raises(AuthorizationResponseError, match="mix-up") as info:
        check_response_issuer(config, iss)
    assert info.value.status == 400


def test_response_issuer_missing(config: SMARTConfiguration) -> None:
    with pytest.raises(AuthorizationResponseError, match="promises one"):
        check_response_issuer(config, None)
    check_response_issuer(
        replace(config, authorization_response_iss_parameter_supported=False), None
    )
    # without a discovered issuer there is nothing to compare with
    check_response_issuer(
        replace(config, issuer=None, authorization_response_iss_parameter_supported=False), "x"
    )


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        ("access_denied", 403, "You declined access in the EHR"),
        ("invalid_scope", 400, "scopes"),
        ("server_error", 502, "internal error"),
        ("temporarily_unavailable", 502, "temporarily unavailable"),
        ("something_new", 400, "(something_new)"),
    ],
)
def test_authorization_error_words(error: str, status: int, words: str) -> None:
    err = authorization_error(error)
    assert err.status == status and words in str(err)


def test_authorization_error_sanitises_attacker_text() -> None:
    err = authorization_error("evil\r\ncode" + "x" * 500, "<script>\x1b[2J" + "y" * 1000)
    text = str(err)
    assert "\r" not in text and "\n" not in text and "\x1b" not in text
    assert len(text) < 400
    assert err.error == "authorization_error"
