"""published_jwks: what the hub agrees to publish, from real key files on disk.

The hub-level rotation (a real sandbox fetching the hub's JWK Set across hub
restarts) is in test_restarts.py.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, OctKey, RSAKey

from jupyterhub_smart.hub import SMARTAuthenticator
from jupyterhub_smart.hub.published_keys import PRIVATE_MEMBERS, jwk_set, load_published_keys
from jupyterhub_smart.smart.keys import write_key_pair

EHR = "https://ehr.example/fhir"


def _write(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_the_jwks_json_of_keys_generate_is_published_public_only(tmp_path: Path) -> None:
    write_key_pair("RS384", tmp_path, rsa_bits=2048)
    write_key_pair("ES384", tmp_path)
    keys = load_published_keys([str(tmp_path / "jwks.json")])
    assert [jwk["alg"] for _source, jwk in keys] == ["RS384", "ES384"]
    for _source, jwk in keys:
        assert set(jwk) <= {"kty", "kid", "alg", "use", "n", "e", "crv", "x", "y"}
        assert jwk["use"] == "sig" and jwk["kid"]


def test_a_pem_public_key_and_a_single_jwk_are_published(tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048, private=True)
    pem = tmp_path / "new.pub.pem"
    pem.write_bytes(key.as_pem(private=False))
    single = _write(tmp_path / "one.json", {**key.as_dict(private=False), "kid": "next-key"})
    keys = load_published_keys([str(pem), single])
    assert keys[0][1]["kid"] == key.thumbprint()  # a PEM has no kid: its thumbprint
    assert keys[1][1]["kid"] == "next-key"
    assert keys[0][1]["n"] == keys[1][1]["n"]


def _private_rsa_jwk() -> dict[str, object]:
    return dict(
        RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True).as_dict(private=True)
    )


@pytest.mark.parametrize("member", PRIVATE_MEMBERS)
def test_any_private_member_is_refused_without_quoting_it(tmp_path: Path, member: str) -> None:
    jwk = {**RSAKey.generate_key(2048, parameters={"kid": "k1"}).as_dict(private=False)}
    value = "c2VjcmV0LWtleS1tYXRlcmlhbC0" + secrets.token_hex(8)
    jwk[member] = value
    path = _write(tmp_path / "jwks.json", {"keys": [jwk]})
    with pytest.raises(ValueError, match="private key material") as raised:
        load_published_keys([path])
    assert member in str(raised.value) and "'k1'" in str(raised.value)
    assert value not in str(raised.value)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: _write(p / "jwks.json", {"keys": [_private_rsa_jwk()]}), "private key material"),
        (
            lambda p: _write(
                p / "oct.json", OctKey.generate_key(256, private=True).as_dict(private=True)
            ),
            "private key material",
        ),
        (lambda p: str(write_key_pair("ES384", p)[0]), "holds a private key"),
        (lambda p: _write(p / "empty.json", {"keys": []}), "non-empty list"),
        (lambda p: _write(p / "other.json", {"issuer": "x"}), "neither a JWK Set"),
        (lambda p: _write(p / "oct-pub.json", {"kty": "oct"}), "cannot be published"),
        (lambda p: _write(p / "bad.json", {"keys": [{"kty": "RSA", "n": "!!"}]}), "not a valid"),
        (lambda p: _write(p / "enc.json", {**_public_rsa(), "use": "enc"}), "only signing"),
        (lambda p: _write(p / "alg.json", {**_public_rsa(), "alg": "RS256"}), "signing_alg"),
        (lambda p: _write(p / "small.json", _public_rsa(1024)), "at least 2048"),
        (lambda p: _write(p / "p256.json", _public_ec(ec.SECP256R1())), "P-384"),
        (lambda p: str(_text(p / "junk.pem", "not a key")), "neither a JWK Set"),
        (lambda p: str(_text(p / "junk.json", "{not json")), "not valid JSON"),
        (lambda p: str(p / "missing.json"), "does not exist"),
    ],
    ids=[
        "private-jwks",
        "symmetric",
        "private-pem",
        "empty",
        "not-a-jwks",
        "oct-without-k",
        "malformed-jwk",
        "use-enc",
        "wrong-alg",
        "rsa-1024",
        "ec-p256",
        "junk-pem",
        "junk-json",
        "missing",
    ],
)
def test_bad_files_are_refused_with_a_clear_message(
    tmp_path: Path, make: object, words: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ValueError, match=words) as raised:
        load_published_keys([path])
    assert "published_jwks file" in str(raised.value)


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _public_rsa(bits: int = 2048) -> dict[str, object]:
    raw = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    pem = raw.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return dict(RSAKey.import_key(pem).as_dict(private=False))


def _public_ec(curve: ec.EllipticCurve) -> dict[str, object]:
    raw = ec.generate_private_key(curve).public_key()
    pem = raw.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return dict(ECKey.import_key(pem).as_dict(private=False))


def test_one_kid_for_two_keys_is_refused_the_same_key_twice_is_served_once() -> None:
    a = {**_public_rsa(), "kid": "same"}
    b = {**_public_rsa(), "kid": "same"}
    with pytest.raises(ValueError, match="'same' names two different keys"):
        jwk_set([("file a", a), ("file b", b)])
    assert len(jwk_set([("file a", a), ("file b", dict(a))])["keys"]) == 1


def test_the_hub_serves_signing_and_published_keys_and_refuses_a_clash(
    tmp_path: Path, crypt_key: None
) -> None:
    current, jwks = write_key_pair("RS384", tmp_path, rsa_bits=2048)
    write_key_pair("RS384", tmp_path, rsa_bits=2048)  # the successor, published first
    issuers = {EHR: {"client_id": "hub", "private_key_path": str(current)}}
    auth = SMARTAuthenticator(issuers=issuers, published_jwks=[str(jwks)], allow_all=True)
    served = auth.public_jwks()["keys"]
    assert len(served) == 2  # the signing key is also in jwks.json: served once
    assert served[0]["kid"] == auth.ehr.clients[EHR].key_id  # type: ignore[attr-defined]
    assert not [m for jwk in served for m in PRIVATE_MEMBERS if m in jwk]
    clash = _write(tmp_path / "clash.json", {**_public_rsa(), "kid": served[0]["kid"]})
    with pytest.raises(ValueError, match="names two different keys"):
        SMARTAuthenticator(issuers=issuers, published_jwks=[clash], allow_all=True)
