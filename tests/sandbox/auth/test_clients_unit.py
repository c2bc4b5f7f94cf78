"""Unit tests of the client registry: validation errors name the entry, never the secret."""

from __future__ import annotations

from typing import Any

import pytest
from authlib.oauth2.rfc6749 import InvalidScopeError
from joserfc.jwk import RSAKey

from jupyterhub_smart.sandbox.auth.clients import (
    DEMO_CLIENT,
    ClientRegistry,
    ClientRegistryError,
)

REDIRECT = "http://127.0.0.1:9/callback"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)


def registry(*entries: dict[str, Any]) -> ClientRegistry:
    return ClientRegistry.from_entries(list(entries), source="clients.json")


def test_default_registry_is_the_demo_client() -> None:
    default = ClientRegistry.from_file(None)
    client = default.get("demo-public")
    assert client is not None
    assert client.redirect_uris == tuple(DEMO_CLIENT["redirect_uris"])
    assert client.check_endpoint_auth_method("none", "token")


def test_each_type_authenticates_one_way() -> None:
    reg = registry(
        {"client_id": "p", "type": "public", "redirect_uris": [REDIRECT]},
        {
            "client_id": "s",
            "type": "confidential-symmetric",
            "client_secret": "x" * 20,
            "redirect_uris": [REDIRECT],
        },
        {
            "client_id": "a",
            "type": "confidential-asymmetric",
            "jwks": {"keys": [KEY.as_dict(private=False)]},
            "scope": "system/*.rs",
        },
    )
    methods = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
    allowed = {
        cid: [m for m in methods if reg.get(cid).check_endpoint_auth_method(m, "token")]
        for cid in "psa"
    }  # type: ignore[union-attr]
    assert allowed == {"p": ["none"], "s": ["client_secret_basic"], "a": ["private_key_jwt"]}
    assert not reg.get("p").check_grant_type("client_credentials")  # type: ignore[union-attr]
    assert reg.get("a").check_grant_type("client_credentials")  # type: ignore[union-attr]
    # a confidential client registered for people (no system/ scope) is no backend
    assert not reg.get("s").check_grant_type("client_credentials")  # type: ignore[union-attr]
    assert not reg.get("a").check_grant_type("authorization_code")  # type: ignore[union-attr]  # no redirect URIs
    assert reg.get("s").check_client_secret("x" * 20)  # type: ignore[union-attr]
    assert not reg.get("s").check_client_secret("x" * 19)  # type: ignore[union-attr]


def test_redirect_uri_match_is_exact() -> None:
    client = registry({"client_id": "p", "type": "public", "redirect_uris": [REDIRECT]}).get("p")
    assert client is not None
    assert client.check_redirect_uri(REDIRECT)
    for near in (REDIRECT + "/", REDIRECT + "?x=1", REDIRECT.upper(), "http://127.0.0.1:9/callbac"):
        assert not client.check_redirect_uri(near)


def test_allowed_scope_filters_and_refuses() -> None:
    client = registry(
        {
            "client_id": "p",
            "type": "public",
            "redirect_uris": [REDIRECT],
            "scope": "openid patient/*.rs system/*.rs",
        }
    ).get("p")
    assert client is not None
    assert (
        client.get_allowed_scope("openid profile patient/Observation.rs system/*.rs __x")
        == "openid patient/Observation.rs"
    )
    assert client.allowed_system_scope("system/Patient.rs patient/*.rs") == "system/Patient.rs"
    with pytest.raises(InvalidScopeError):
        client.get_allowed_scope(None)
    with pytest.raises(InvalidScopeError):
        client.get_allowed_scope("patient/Observation.zz")
    with pytest.raises(InvalidScopeError):
        client.get_allowed_scope("user/*.rs")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nope", "expected a JSON object"),
        ({"client_id": "", "type": "public", "redirect_uris": [REDIRECT]}, "'client_id'"),
        (
            {"client_id": "x", "type": "public", "redirect_uris": [REDIRECT], "colour": 1},
            "unknown field",
        ),
        ({"client_id": "x", "type": "public", "redirect_uris": []}, "at least one URL"),
        (
            {"client_id": "x", "type": "public", "redirect_uris": ["http://h/cb#frag"]},
            "without fragment",
        ),
        (
            {
                "client_id": "x",
                "type": "public",
                "redirect_uris": [REDIRECT],
                "client_secret": "s" * 20,
            },
            "only for confidential-symmetric",
        ),
        (
            {
                "client_id": "x",
                "type": "confidential-symmetric",
                "redirect_uris": [REDIRECT],
                "client_secret": "tiny-secret",
            },
            "at least 16",
        ),
        (
            {
                "client_id": "x",
                "type": "confidential-asymmetric",
                "jwks": {"keys": [KEY.as_dict(private=True)]},
            },
            "public keys only",
        ),
        (
            {"client_id": "x", "type": "confidential-asymmetric", "jwks": {"keys": []}},
            "non-empty 'keys'",
        ),
        (
            {"client_id": "x", "type": "confidential-asymmetric", "jwks_uri": "ftp://h/jwks"},
            "absolute http(s) URL",
        ),
        (
            {
                "client_id": "x",
                "type": "confidential-asymmetric",
                "jwks_uri": "http://h/j",
                "jwks": {"keys": [KEY.as_dict(private=False)]},
            },
            "exactly one",
        ),
        (
            {
                "client_id": "x",
                "type": "confidential-asymmetric",
                "jwks": {"keys": [KEY.as_dict(private=False)]},
                "scope": "patient/*.rs",
            },
            "register the 'system/' scopes",
        ),
        (
            {
                "client_id": "x",
                "type": "public",
                "redirect_uris": [REDIRECT],
                "scope": "patient/Foo.zz",
            },
            "'scope'",
        ),
    ],
)
def test_invalid_entries_are_named(entry: object, message: str) -> None:
    with pytest.raises(ClientRegistryError) as caught:
        ClientRegistry.from_entries(
            [{"client_id": "fine", "type": "public", "redirect_uris": [REDIRECT]}, entry],
            source="clients.json",
        )
    text = str(caught.value)
    assert text.startswith("clients.json: entry 1")
    assert message in text
    assert "tiny-secret" not in text


def test_duplicate_client_ids_are_refused() -> None:
    entry = {"client_id": "twice", "type": "public", "redirect_uris": [REDIRECT]}
    with pytest.raises(ClientRegistryError, match="duplicate client_id"):
        ClientRegistry.from_entries([entry, entry])


def test_for_app_url_matches_redirect_origins() -> None:
    reg = registry(
        {
            "client_id": "a",
            "type": "public",
            "redirect_uris": ["http://127.0.0.1:8000/hub/oauth_callback"],
        },
        {"client_id": "b", "type": "public", "redirect_uris": ["http://127.0.0.1:8001/cb"]},
    )
    assert [c.client_id for c in reg.for_app_url("http://127.0.0.1:8000/hub/oauth_login")] == ["a"]
    assert reg.for_app_url("http://127.0.0.1:9999/launch") == []


def test_consent_page_describes_scopes_in_plain_words() -> None:
    from jupyterhub_smart.sandbox.auth.people import describe_scope

    assert describe_scope("patient/*.rs") == "Read and search all records of the selected patient"
    assert describe_scope("user/Observation.cruds") == (
        "Create, read, update, delete and search Observation records that you can see"
    )
    assert describe_scope("patient/Observation.rs?category=vital-signs").endswith(
        "(only category vital-signs)"
    )
    assert describe_scope("offline_access").startswith("Keep access")
    assert describe_scope("weird") == "weird"
