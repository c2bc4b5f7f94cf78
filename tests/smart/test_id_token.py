"""id_token verification: signature, algorithm allow-list, claims, JWKS cache and rotation.

The EHR's JWKS endpoint is an ``httpx.MockTransport`` here because the attacks
(alg none, HS256 with the public key, jku) need tokens no real EHR would sign;
the sandbox's real id_tokens are verified in ``test_integration_sandbox.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from jupyterhub_smart.smart.discovery import SMARTConfiguration
from jupyterhub_smart.smart.errors import IDTokenError
from jupyterhub_smart.smart.id_token import JWKSCache, verify_id_token

ISSUER = "https://ehr.example.org/auth"
JWKS_URI = "https://ehr.example.org/auth/jwks"
CLIENT_ID = "hub-client"
NONCE = "nonce-0123456789abcdef0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, {"kid": "rsa-1"}, private=True)


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", {"kid": "ec-1"}, private=True)


@pytest.fixture(scope="module")
def attacker_key() -> RSAKey:
    return RSAKey.generate_key(2048, {"kid": "rsa-1"}, private=True)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "practitioner-1",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": NONCE,
        "fhirUser": "Practitioner/practitioner-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    key: Any, alg: str = "RS256", header: dict[str, Any] | None = None, **overrides: Any
) -> str:
    head = {"alg": alg, "kid": key.kid, **(header or {})}
    return jwt.encode(head, claims(**overrides), key, algorithms=[alg])


class JWKSServer:
    """The EHR's JWKS endpoint, with a mutable key list and a request log."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.requests: list[str] = []
        self.status = 200
        self.body: bytes | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.body is not None:
            return httpx.Response(self.status, content=self.body)
        doc = {"keys": [public_jwk_any(k) for k in self.keys]}
        return httpx.Response(self.status, json=doc)


def public_jwk_any(key: Any) -> Any:
    """A key object's public JWK; anything else (raw dicts, junk) as it is."""
    if isinstance(key, (RSAKey, ECKey)):
        return dict(key.as_dict(private=False))
    return key


async def verify(
    config: SMARTConfiguration,
    token: str,
    server: JWKSServer,
    *,
    nonce: str | None = NONCE,
    cache: JWKSCache | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        jwks = cache or JWKSCache(http)
        if cache is not None:
            jwks._http = http  # the cache outlives one client in rotation tests
        return await verify_id_token(
            token, config=config, client_id=CLIENT_ID, jwks=jwks, nonce=nonce, **kwargs
        )


async def test_good_rsa_token(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    server = JWKSServer(rsa_key)
    result = await verify(config, sign(rsa_key), server)
    assert result["sub"] == "practitioner-1"
    assert result["fhirUser"] == "Practitioner/practitioner-1"
    assert server.requests == [JWKS_URI]


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
async def test_other_rsa_algorithms(
    rsa_key: RSAKey, alg: str, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    assert (await verify(config, sign(rsa_key, alg), JWKSServer(rsa_key)))["iss"] == ISSUER


async def test_good_ec_token(
    ec_key: ECKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    server = JWKSServer(ec_key)
    assert (await verify(config, sign(ec_key, "ES384"), server))["aud"] == CLIENT_ID


async def test_token_without_kid_uses_compatible_keys(
    rsa_key: RSAKey, ec_key: ECKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    token = jwt.encode({"alg": "RS256"}, claims(), rsa_key, algorithms=["RS256"])
    assert (await verify(config, token, JWKSServer(ec_key, rsa_key)))["sub"] == "practitioner-1"


async def test_bad_signature(
    rsa_key: RSAKey, attacker_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    token = sign(attacker_key)  # same kid, other key
    with pytest.raises(IDTokenError, match="signature does not verify") as info:
        await verify(config, token, JWKSServer(rsa_key))
    assert info.value.status == 403 and info.value.error == "invalid_id_token"


async def test_tampered_payload(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    header, _, signature = sign(rsa_key).split(".")
    forged_payload = b64(json.dumps(claims(sub="admin")).encode())
    with pytest.raises(IDTokenError, match="signature does not verify"):
        await verify(config, f"{header}.{forged_payload}.{signature}", JWKSServer(rsa_key))


async def test_alg_none_refused(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    server = JWKSServer(rsa_key)
    for alg in ("none", "None", "NONE"):
        header = b64(json.dumps({"alg": alg, "kid": "rsa-1"}).encode())
        token = f"{header}.{b64(json.dumps(claims()).encode())}."
        with pytest.raises(IDTokenError, match=r"algorithm .* is not allowed"):
            await verify(config, token, server)
    assert server.requests == []  # refused before any key lookup


async def test_hs256_signed_with_the_public_key_refused(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    public_pem = rsa_key.as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(signature)}"
    with pytest.raises(IDTokenError, match="'HS256' is not allowed"):
        await verify(config, token, JWKSServer(rsa_key))
    # even if a caller put HS256 in the allow-list, it is not an asymmetric algorithm
    with pytest.raises(IDTokenError, match="not allowed"):
        await verify(config, token, JWKSServer(rsa_key), algorithms=("HS256", "RS256"))


async def test_oct_keys_in_jwks_are_ignored(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    secret = b"shared-secret-shared-secret-32by"
    oct_jwk = {"kty": "oct", "kid": "rsa-1", "k": b64(secret)}
    header = b64(json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(claims()).encode())
    token = f"{header}.{payload}.{b64(b'x' * 256)}"
    with pytest.raises(IDTokenError, match="no key"):
        await verify(config, token, JWKSServer(oct_jwk))


async def test_jku_and_embedded_jwk_in_header_are_ignored(
    ec_key: ECKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    attacker = ECKey.generate_key("P-384", {"kid": "ec-1"}, private=True)
    token = sign(
        attacker,
        "ES384",
        header={
            "jku": "https://evil.example/jwks",
            "jwk": dict(attacker.as_dict(private=False)),
            "x5u": "https://evil.example/x",
        },
    )
    server = JWKSServer(ec_key)
    with pytest.raises(IDTokenError, match="signature does not verify"):
        await verify(config, token, server)
    assert server.requests == [JWKS_URI]  # only the pinned jwks_uri was ever fetched


async def test_oversized_header_refused(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    token = sign(rsa_key, header={"jwk": dict(rsa_key.as_dict(private=False))})
    with pytest.raises(IDTokenError, match="header cannot be decoded"):
        await verify(config, token, JWKSServer(rsa_key))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"aud": "someone-else"}, "issued to another client"),
        ({"aud": ["someone-else", "other"]}, "issued to another client"),
        ({"aud": None}, "no valid 'aud'"),
        ({"aud": 5}, "no valid 'aud'"),
        ({"aud": [CLIENT_ID, "other"]}, "several audiences and no 'azp'"),
        ({"aud": [CLIENT_ID, "other"], "azp": "other"}, "authorized party"),
        ({"azp": "other"}, "authorized party"),
        ({"iss": "https://evil.example/auth"}, "is not the EHR's issuer"),
        ({"iss": ISSUER + "/"}, "is not the EHR's issuer"),
        ({"iss": None}, "is not the EHR's issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": None}, "no 'exp'"),
        ({"exp": "tomorrow"}, "'exp' claim is not a number"),
        ({"iat": int(time.time()) + 3600}, "issued in the future"),
        ({"iat": None}, "no 'iat'"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"sub": None}, "no 'sub'"),
        ({"sub": ""}, "no 'sub'"),
        ({"nonce": "another-nonce"}, "nonce does not match"),
        ({"nonce": None}, "no 'nonce'"),
    ],
)
async def test_claim_checks(
    rsa_key: RSAKey,
    overrides: dict[str, Any],
    words: str,
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    with pytest.raises(IDTokenError, match=words) as info:
        await verify(config, sign(rsa_key, **overrides), JWKSServer(rsa_key))
    assert info.value.status == 403


async def test_azp_matching_with_several_audiences(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    token = sign(rsa_key, aud=[CLIENT_ID, "other"], azp=CLIENT_ID)
    assert (await verify(config, token, JWKSServer(rsa_key)))["azp"] == CLIENT_ID


async def test_leeway(rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    now = time.time()
    token = sign(rsa_key, exp=int(now) - 30, iat=int(now) - 600)
    assert await verify(config, token, JWKSServer(rsa_key), leeway=60)
    with pytest.raises(IDTokenError, match="expired"):
        await verify(config, token, JWKSServer(rsa_key), leeway=0)
    future = sign(rsa_key, iat=int(now) + 30)
    assert await verify(config, future, JWKSServer(rsa_key), leeway=60)
    with pytest.raises(IDTokenError, match="future"):
        await verify(config, future, JWKSServer(rsa_key), leeway=0)


async def test_no_expected_nonce_accepts_token_with_or_without(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    assert await verify(config, sign(rsa_key), JWKSServer(rsa_key), nonce=None)
    assert await verify(config, sign(rsa_key, nonce=None), JWKSServer(rsa_key), nonce=None)


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("", "has no id_token"),
        ("not-a-jwt", "not a compact JWS"),
        ("a.b.c.d", "not a compact JWS"),
        ("!!!.e30.sig", "header cannot be decoded"),
        ("x" * 70000 + "..", "not a compact JWS"),
    ],
)
async def test_malformed_tokens(
    token: str, words: str, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    with pytest.raises(IDTokenError, match=words):
        await verify(config, token, JWKSServer())


async def test_non_json_payload(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    from joserfc import jws

    token = jws.serialize_compact({"alg": "RS256", "kid": "rsa-1"}, b"not json", rsa_key)
    with pytest.raises(IDTokenError, match="malformed"):
        await verify(config, token, JWKSServer(rsa_key))


async def test_config_without_issuer_or_jwks(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    for config in (smart_config(issuer=None), smart_config(jwks_uri=None)):
        with pytest.raises(IDTokenError, match="cannot be verified") as info:
            await verify(config, sign(rsa_key), JWKSServer(rsa_key))
        assert info.value.status == 502


async def test_wrong_curve_key_is_not_used(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    p256 = ECKey.generate_key("P-256", {"kid": "ec-1"}, private=True)
    token = jwt.encode(
        {"alg": "ES384", "kid": "ec-1"},
        claims(),
        ECKey.generate_key("P-384", {"kid": "ec-1"}, private=True),
        algorithms=["ES384"],
    )
    with pytest.raises(IDTokenError, match="no key"):
        await verify(config, token, JWKSServer(dict(p256.as_dict(private=False))))


async def test_unknown_kid_then_rotation(
    rsa_key: RSAKey, ec_key: ECKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    now = [1000.0]
    server = JWKSServer(rsa_key)
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        cache = JWKSCache(http, min_refresh_interval=30, clock=lambda: now[0])
        args: dict[str, Any] = {
            "config": config,
            "client_id": CLIENT_ID,
            "jwks": cache,
            "nonce": NONCE,
        }
        await verify_id_token(sign(rsa_key), **args)
        assert len(server.requests) == 1
        await verify_id_token(sign(rsa_key), **args)
        assert len(server.requests) == 1  # cached

        now[0] += 60
        server.keys = [rsa_key, ec_key]  # the EHR publishes a new key and starts using it
        assert (await verify_id_token(sign(ec_key, "ES384"), **args))["sub"]
        assert len(server.requests) == 2  # one refetch on the unknown kid

        # an unknown kid right after: no second refetch within min_refresh_interval
        stranger = ECKey.generate_key("P-384", {"kid": "who"}, private=True)
        with pytest.raises(IDTokenError, match="no key for the id_token's kid 'who'"):
            await verify_id_token(sign(stranger, "ES384"), **args)
        assert len(server.requests) == 2

        now[0] += 31
        with pytest.raises(IDTokenError, match="no key"):
            await verify_id_token(sign(stranger, "ES384"), **args)
        assert len(server.requests) == 3

        now[0] += 3600  # TTL expiry refetches too
        await verify_id_token(sign(rsa_key), **args)
        assert len(server.requests) == 4


async def test_jwks_single_flight() -> None:
    release = asyncio.Event()
    calls = 0
    key = RSAKey.generate_key(2048, {"kid": "k"}, private=True)

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await release.wait()
        return httpx.Response(200, json={"keys": [dict(key.as_dict(private=False))]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        cache = JWKSCache(http)
        tasks = [asyncio.create_task(cache.key_set(JWKS_URI)) for _ in range(50)]
        await asyncio.sleep(0)
        release.set()
        sets = await asyncio.gather(*tasks)
    assert calls == 1 and all(s is sets[0] for s in sets)


@pytest.mark.parametrize(
    ("status", "body", "words", "code"),
    [
        (500, b"{}", "answered HTTP 500", 502),
        (200, b"<html>", "is not JSON", 502),
        (200, b'{"no": "keys"}', "not a JWK Set", 502),
        (200, b"[]", "not a JWK Set", 502),
    ],
)
async def test_jwks_faults(
    rsa_key: RSAKey,
    status: int,
    body: bytes,
    words: str,
    code: int,
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    server = JWKSServer()
    server.status, server.body = status, body
    with pytest.raises(IDTokenError, match=words) as info:
        await verify(config, sign(rsa_key), server)
    assert info.value.status == code


async def test_jwks_timeout_and_network_error(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, status in ((timeout, 504), (refused, 502)):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            with pytest.raises(IDTokenError) as info:
                await verify_id_token(
                    sign(rsa_key),
                    config=config,
                    client_id=CLIENT_ID,
                    jwks=JWKSCache(http),
                    nonce=NONCE,
                )
        assert info.value.status == status


async def test_invalid_keys_in_jwks_are_skipped(
    rsa_key: RSAKey,
    caplog: pytest.LogCaptureFixture,
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    broken = {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}
    enc_key = {**dict(rsa_key.as_dict(private=False)), "use": "enc", "kid": "enc"}
    server = JWKSServer(
        broken, enc_key, "junk", {"kty": "OKP", "crv": "Ed25519", "x": "AA"}, rsa_key
    )
    assert await verify(config, sign(rsa_key), server)


async def test_error_messages_never_contain_the_token(
    rsa_key: RSAKey, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    token = sign(rsa_key, aud="someone-else")
    with pytest.raises(IDTokenError) as info:
        await verify(config, token, JWKSServer(rsa_key))
    for part in token.split("."):
        assert part not in str(info.value)


async def test_huge_jwks_is_capped(
    rsa_key: RSAKey,
    caplog: pytest.LogCaptureFixture,
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    filler = [
        dict(RSAKey.import_key(rsa_key.as_dict(private=False)).as_dict(), kid=f"f{i}")
        for i in range(60)
    ]
    server = JWKSServer(*filler, rsa_key)  # the real key comes after the cap
    with pytest.raises(IDTokenError, match="no key"):
        await verify(config, sign(rsa_key), server)
    assert "only the first 50 are used" in caplog.text
