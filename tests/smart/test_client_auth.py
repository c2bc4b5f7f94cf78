"""Client authentication: public, client_secret_basic, private_key_jwt (RS384, ES384).

Client assertions are verified here with joserfc and the *public* key only, the
way an EHR does.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import unquote, unquote_plus

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from jupyterhub_smart.smart.client_auth import (
    CLIENT_ASSERTION_TYPE,
    ClientAuthentication,
    ClientSecretBasic,
    PrivateKeyJWT,
    PublicClient,
    client_authentication_for,
)
from jupyterhub_smart.smart.issuers import IssuerPolicy
from jupyterhub_smart.smart.keys import generate_private_key, public_jwks, write_key_pair

TOKEN_URL = "https://ehr.example.org/auth/token"


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    key = generate_private_key("RS384", rsa_bits=2048)
    assert isinstance(key, RSAKey)
    return key


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    key = generate_private_key("ES384")
    assert isinstance(key, ECKey)
    return key


def test_public_client() -> None:
    auth = PublicClient("hub")
    form: dict[str, str] = {"grant_type": "authorization_code"}
    headers: dict[str, str] = {}
    auth.apply(TOKEN_URL, form, headers)
    assert form == {"grant_type": "authorization_code", "client_id": "hub"}
    assert headers == {}
    assert isinstance(auth, ClientAuthentication)


def test_client_secret_basic_form_encodes_id_and_secret() -> None:
    auth = ClientSecretBasic("my:client", "p@ss:w%rd+x y")
    form: dict[str, str] = {"client_id": "my:client"}
    headers: dict[str, str] = {}
    auth.apply(TOKEN_URL, form, headers)
    assert "client_id" not in form
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert user == "my%3Aclient" and password == "p%40ss%3Aw%25rd%2Bx%20y"
    # decodes the same whether the server uses unquote_plus or unquote
    assert unquote_plus(user) == "my:client" and unquote_plus(password) == "p@ss:w%rd+x y"
    assert unquote(password) == "p@ss:w%rd+x y"
    assert "p@ss" not in repr(auth)


def test_client_secret_basic_needs_secret() -> None:
    with pytest.raises(ValueError):
        ClientSecretBasic("hub", "")


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_private_key_jwt_assertion_verifies(which: str, rsa_key: RSAKey, ec_key: ECKey) -> None:
    key = rsa_key if which == "rsa" else ec_key
    alg = "RS384" if which == "rsa" else "ES384"
    auth = PrivateKeyJWT("hub-client", key)
    form: dict[str, str] = {"client_id": "hub-client"}
    auth.apply(TOKEN_URL, form, {})
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert "client_id" not in form

    public = KeySet.import_key_set(public_jwks([key]))  # type: ignore[arg-type]
    token = jwt.decode(form["client_assertion"], public, algorithms=[alg])
    assert token.header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    claims = token.claims
    assert claims["iss"] == claims["sub"] == "hub-client"
    assert claims["aud"] == TOKEN_URL
    now = time.time()
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["exp"] <= now + 300
    assert claims["iat"] <= now + 1
    assert len(claims["jti"]) >= 32


def test_assertion_does_not_verify_with_another_key(rsa_key: RSAKey) -> None:
    other = generate_private_key("RS384", rsa_bits=2048)
    assertion = PrivateKeyJWT("hub", rsa_key).assertion(TOKEN_URL)
    from joserfc.errors import BadSignatureError

    with pytest.raises(BadSignatureError):
        jwt.decode(assertion, RSAKey.import_key(other.as_dict(private=False)), algorithms=["RS384"])


def test_jti_unique_across_assertions(ec_key: ECKey) -> None:
    auth = PrivateKeyJWT("hub", ec_key)
    public = KeySet.import_key_set(public_jwks([ec_key]))  # type: ignore[arg-type]
    jtis = {
        jwt.decode(auth.assertion(TOKEN_URL), public, algorithms=["ES384"]).claims["jti"]
        for _ in range(200)
    }
    assert len(jtis) == 200


def test_clock_and_lifetime(ec_key: ECKey) -> None:
    auth = PrivateKeyJWT("hub", ec_key, lifetime=60, clock=lambda: 1_000_000.0)
    public = KeySet.import_key_set(public_jwks([ec_key]))  # type: ignore[arg-type]
    claims = jwt.decode(auth.assertion(TOKEN_URL), public, algorithms=["ES384"]).claims
    assert claims["iat"] == 1_000_000 and claims["exp"] == 1_000_060
    for bad in (0, 301, -5):
        with pytest.raises(ValueError, match="lifetime"):
            PrivateKeyJWT("hub", ec_key, lifetime=bad)


def test_private_key_jwt_refusals(rsa_key: RSAKey, ec_key: ECKey) -> None:
    with pytest.raises(ValueError, match="does not match"):
        PrivateKeyJWT("hub", rsa_key, alg="ES384")
    with pytest.raises(ValueError, match="does not match"):
        PrivateKeyJWT("hub", ec_key, alg="RS384")
    public_only = RSAKey.import_key(rsa_key.as_dict(private=False))
    with pytest.raises(ValueError, match="private key"):
        PrivateKeyJWT("hub", public_only)


def test_key_id_override_and_public_jwk(ec_key: ECKey) -> None:
    auth = PrivateKeyJWT("hub", ec_key, key_id="k-2026")
    assert auth.public_jwk()["kid"] == "k-2026"
    assert "d" not in auth.public_jwk()
    public = KeySet.import_key_set({"keys": [auth.public_jwk()]})  # type: ignore[typeddict-item]
    assert (
        jwt.decode(auth.assertion(TOKEN_URL), public, algorithms=["ES384"]).header["kid"]
        == "k-2026"
    )
    assert "k-2026" in repr(auth) and str(ec_key.as_dict(private=True)["d"]) not in repr(auth)


def test_client_authentication_for_each_method(tmp_path: Path) -> None:
    pem, _ = write_key_pair("ES384", tmp_path)
    policy = IssuerPolicy(
        {
            "https://a.example/fhir": {"client_id": "a"},
            "https://b.example/fhir": {"client_id": "b", "client_secret": "sec-ret-b"},
            "https://c.example/fhir": {
                "client_id": "c",
                "private_key_path": str(pem),
                "key_id": "kc",
            },
        }
    )
    a, b, c = (client_authentication_for(r) for r in policy.registrations())
    assert isinstance(a, PublicClient) and a.method == "public"
    assert isinstance(b, ClientSecretBasic) and b.client_id == "b"
    assert isinstance(c, PrivateKeyJWT) and c.alg == "ES384" and c.key_id == "kc"


def test_client_authentication_for_bad_key_names_issuer(tmp_path: Path) -> None:
    policy = IssuerPolicy(
        {
            "https://c.example/fhir": {
                "client_id": "c",
                "private_key_path": str(tmp_path / "none.pem"),
            }
        }
    )
    with pytest.raises(ValueError, match=r"issuer https://c.example/fhir: .*does not exist"):
        client_authentication_for(policy.get("https://c.example/fhir"))


def test_client_authentication_for_alg_mismatch(tmp_path: Path) -> None:
    pem, _ = write_key_pair("ES384", tmp_path)
    policy = IssuerPolicy(
        {
            "https://c.example/fhir": {
                "client_id": "c",
                "private_key_path": str(pem),
                "signing_alg": "RS384",
            }
        }
    )
    with pytest.raises(ValueError, match="does not match"):
        client_authentication_for(policy.get("https://c.example/fhir"))
