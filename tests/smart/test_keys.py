"""Signing keys: generation, loading, refusal of unusable keys, public JWKS output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, RSAKey

from jupyterhub_smart.smart import keys_cli
from jupyterhub_smart.smart.keys import (
    default_alg,
    generate_private_key,
    load_private_key,
    public_jwk,
    public_jwks,
    thumbprint_kid,
    write_key_pair,
)

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


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


def test_generated_keys(rsa_key: RSAKey, ec_key: ECKey) -> None:
    assert rsa_key.is_private and ec_key.is_private
    assert rsa_key.kid == thumbprint_kid(rsa_key)
    assert ec_key.curve_name == "P-384"
    assert default_alg(rsa_key) == "RS384" and default_alg(ec_key) == "ES384"
    assert generate_private_key("ES384", key_id="k1").kid == "k1"


def test_generate_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="RS384 or ES384"):
        generate_private_key("RS256")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2048"):
        generate_private_key("RS384", rsa_bits=1024)


def test_public_jwk_never_contains_private_members(rsa_key: RSAKey, ec_key: ECKey) -> None:
    rsa_jwk = public_jwk(rsa_key)
    assert set(rsa_jwk) == {"kty", "kid", "alg", "use", "n", "e"}
    assert rsa_jwk["alg"] == "RS384" and rsa_jwk["use"] == "sig"
    ec_jwk = public_jwk(ec_key)
    assert set(ec_jwk) == {"kty", "kid", "alg", "use", "crv", "x", "y"}
    assert ec_jwk["crv"] == "P-384"
    jwks = public_jwks([rsa_key, ec_key, rsa_key])
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert not PRIVATE_MEMBERS & set(jwk)
    # the private values themselves appear nowhere in the output
    private_d = str(rsa_key.as_dict(private=True)["d"])
    assert private_d not in json.dumps(jwks)


def test_public_jwk_refuses_mismatched_alg(rsa_key: RSAKey, ec_key: ECKey) -> None:
    with pytest.raises(ValueError, match="does not match"):
        public_jwk(rsa_key, "ES384")
    with pytest.raises(ValueError, match="does not match"):
        public_jwks([(ec_key, "RS384")])


def test_p256_key_is_not_es384() -> None:
    p256 = ECKey.generate_key("P-256", private=True)
    with pytest.raises(ValueError, match="P-384"):
        default_alg(p256)


def write_pem(path: Path, native: object, *, password: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = native.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def test_load_pem_rsa_and_ec(tmp_path: Path) -> None:
    rsa_native = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    loaded = load_private_key(write_pem(tmp_path / "r.pem", rsa_native))
    assert isinstance(loaded, RSAKey) and loaded.kid == thumbprint_kid(loaded)
    ec_native = ec.generate_private_key(ec.SECP384R1())
    loaded_ec = load_private_key(write_pem(tmp_path / "e.pem", ec_native), key_id="mine")
    assert isinstance(loaded_ec, ECKey) and loaded_ec.kid == "mine"


def test_load_private_jwk_json(tmp_path: Path, ec_key: ECKey) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(ec_key.as_dict(private=True)))
    path.chmod(0o600)
    loaded = load_private_key(path)
    assert loaded.thumbprint() == ec_key.thumbprint()
    assert loaded.kid == ec_key.kid  # the JWK's own kid is kept
    assert load_private_key(path, key_id="override").kid == "override"


def test_load_refusals(tmp_path: Path, rsa_key: RSAKey) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_private_key(tmp_path / "missing.pem")
    encrypted = write_pem(
        tmp_path / "enc.pem", ec.generate_private_key(ec.SECP384R1()), password=b"pw-123456"
    )
    with pytest.raises(ValueError, match="password-protected"):
        load_private_key(encrypted)
    public = tmp_path / "pub.pem"
    public.write_bytes(rsa_key.as_pem(private=False))
    with pytest.raises(ValueError, match="holds a public key"):
        load_private_key(public)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_private_key(garbage)
    small = write_pem(tmp_path / "small.pem", rsa.generate_private_key(65537, 1024))  # noqa: S505 - the weak key under test
    with pytest.raises(ValueError, match="at least 2048"):
        load_private_key(small)
    p256 = write_pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match="P-384"):
        load_private_key(p256)
    ed = write_pem(tmp_path / "ed.pem", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="only RSA and EC"):
        load_private_key(ed)
    pub_jwk = tmp_path / "pub.json"
    pub_jwk.write_text(json.dumps(public_jwk(rsa_key)))
    with pytest.raises(ValueError, match="not a private JWK"):
        load_private_key(pub_jwk)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match="neither PEM nor JSON"):
        load_private_key(bad_json)


def test_load_error_never_contains_key_material(tmp_path: Path) -> None:
    pem = write_pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError) as info:
        load_private_key(pem)
    assert "PRIVATE KEY" not in str(info.value)
    assert pem.read_text().splitlines()[1] not in str(info.value)


def test_world_readable_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_pem(tmp_path / "k.pem", ec.generate_private_key(ec.SECP384R1()))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_private_key(path)
    assert "readable by group or others" in caplog.text


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_write_key_pair(tmp_path: Path, alg: str) -> None:
    pem, jwks_path = write_key_pair(alg, tmp_path / "keys", rsa_bits=2048)  # type: ignore[arg-type]
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    key = load_private_key(pem)
    jwks = json.loads(jwks_path.read_text())
    assert jwks == public_jwks([key])
    assert "PRIVATE" not in jwks_path.read_text()


def test_write_key_pair_appends_successor_keys(tmp_path: Path) -> None:
    first, jwks_path = write_key_pair("ES384", tmp_path)
    second, _ = write_key_pair("RS384", tmp_path, rsa_bits=2048)
    assert first != second
    kids = [k["kid"] for k in json.loads(jwks_path.read_text())["keys"]]
    assert kids == [load_private_key(first).kid, load_private_key(second).kid]


def test_write_key_pair_refuses_a_private_jwks(tmp_path: Path, ec_key: ECKey) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ec_key.as_dict(private=True)]}))
    with pytest.raises(ValueError, match="private key members"):
        write_key_pair("ES384", tmp_path)
    (tmp_path / "jwks.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JWK Set"):
        write_key_pair("ES384", tmp_path)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jupyterhub-smart")
    keys_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_generate_and_jwks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_cli(["keys", "generate", "--alg", "ES384", "--out", str(out), "--kid", "hub-1"]) == 0
    printed = capsys.readouterr().out
    pem = next(out.glob("*.pem"))
    assert str(pem) in printed and str(out / "jwks.json") in printed
    assert "BEGIN" not in printed
    assert json.loads((out / "jwks.json").read_text())["keys"][0]["kid"] == "hub-1"

    assert run_cli(["keys", "jwks", str(pem), "--kid", "hub-1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads((out / "jwks.json").read_text())


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["keys", "jwks", str(tmp_path / "nope.pem")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(["keys", "jwks", "a.pem", "b.pem", "--kid", "x"]) == 2
    with pytest.raises(SystemExit):
        run_cli(["keys", "generate", "--alg", "HS256", "--out", str(tmp_path)])
    assert run_cli(["keys"]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli(["keys", "generate", "--alg", "ES384", "--out", str(blocker)]) == 1


def test_umask_does_not_widen_private_key(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pem, _ = write_key_pair("ES384", tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
