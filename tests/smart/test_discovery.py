"""Discovery: validation of the SMART configuration, faults, TTL cache, single flight.

Faults the sandbox cannot produce (HTML, 500, timeouts, missing fields) come from
an ``httpx.MockTransport`` given to this one client; the real sandbox is used in
``test_integration_sandbox.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from jupyterhub_smart.smart.discovery import (
    OAUTH_URIS_EXTENSION,
    DiscoveryCache,
    SMARTConfiguration,
    resolve_endpoint,
)
from jupyterhub_smart.smart.errors import DiscoveryError, UnknownIssuer

BASE = "https://ehr.example.org/fhir"

GOOD: dict[str, Any] = {
    "issuer": "https://ehr.example.org/auth",
    "authorization_endpoint": "https://ehr.example.org/auth/authorize",
    "token_endpoint": "https://ehr.example.org/auth/token",
    "jwks_uri": "https://ehr.example.org/auth/jwks",
    "revocation_endpoint": "https://ehr.example.org/auth/revoke",
    "introspection_endpoint": "https://ehr.example.org/auth/introspect",
    "capabilities": ["launch-ehr", "sso-openid-connect", "permission-v2", "client-public"],
    "code_challenge_methods_supported": ["S256"],
    "scopes_supported": ["openid", "fhirUser", "launch"],
    "grant_types_supported": ["authorization_code", "refresh_token"],
    "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
    "authorization_response_iss_parameter_supported": True,
}


class Counter:
    """Counts requests by path and answers from a handler."""

    def __init__(self, handler: Callable[[httpx.Request], Any]) -> None:
        self.handler = handler
        self.calls: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        result = self.handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result


def json_answer(doc: object, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=doc)


def client(handler: Callable[[httpx.Request], Any]) -> tuple[httpx.AsyncClient, Counter]:
    counter = Counter(handler)
    return httpx.AsyncClient(transport=httpx.MockTransport(counter)), counter


async def discover(doc: object, status: int = 200, **kwargs: Any) -> SMARTConfiguration:
    http, _ = client(json_answer(doc, status))
    async with http:
        return await DiscoveryCache(http, **kwargs).get(BASE)


async def test_good_configuration() -> None:
    http, counter = client(json_answer(GOOD))
    async with http:
        config = await DiscoveryCache(http).get(BASE + "/")
    assert counter.calls == ["/fhir/.well-known/smart-configuration"]
    assert config.fhir_base_url == BASE
    assert config.issuer == "https://ehr.example.org/auth"
    assert config.token_endpoint == "https://ehr.example.org/auth/token"
    assert config.jwks_uri == "https://ehr.example.org/auth/jwks"
    assert config.supports("permission-v2") and not config.supports("permission-v1")
    assert config.code_challenge_methods_supported == ("S256",)
    assert config.grant_types_supported == ("authorization_code", "refresh_token")
    assert config.authorization_response_iss_parameter_supported is True
    assert config.source == "well-known"


async def test_accept_header_sent() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept"])
        return httpx.Response(200, json=GOOD)

    http, _ = client(handler)
    async with http:
        await DiscoveryCache(http).get(BASE)
    assert seen == ["application/json"]


async def test_relative_urls_resolved_against_base() -> None:
    doc = {
        **GOOD,
        "authorization_endpoint": "/auth/authorize",
        "token_endpoint": "auth/token",
        "jwks_uri": "../keys",
    }
    config = await discover(doc)
    assert config.authorization_endpoint == "https://ehr.example.org/auth/authorize"
    assert config.token_endpoint == "https://ehr.example.org/fhir/auth/token"
    assert config.jwks_uri == "https://ehr.example.org/keys"


async def test_optional_fields_may_be_absent() -> None:
    doc = {
        "authorization_endpoint": GOOD["authorization_endpoint"],
        "token_endpoint": GOOD["token_endpoint"],
        "code_challenge_methods_supported": ["S256"],
    }
    config = await discover(doc)
    assert config.issuer is None and config.jwks_uri is None and config.revocation_endpoint is None
    assert config.capabilities == frozenset() and config.scopes_supported == ()


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (without("token_endpoint"), "no 'token_endpoint'"),
        (without("authorization_endpoint"), "no 'authorization_endpoint'"),
        ({**GOOD, "token_endpoint": ""}, "no 'token_endpoint'"),
        (without("code_challenge_methods_supported"), "PKCE S256"),
        ({**GOOD, "code_challenge_methods_supported": ["plain"]}, "PKCE S256"),
        ({**GOOD, "code_challenge_methods_supported": "S256"}, "must be a list of strings"),
        (without("issuer"), "'issuer' is missing"),
        (without("jwks_uri"), "'jwks_uri' is missing"),
        ({**GOOD, "issuer": 5}, "'issuer' must be a non-empty string"),
        ({**GOOD, "capabilities": "launch-ehr"}, "'capabilities' must be a list"),
        ({**GOOD, "capabilities": [1, 2]}, "'capabilities' must be a list"),
        ({**GOOD, "token_endpoint": 42}, "must be a string URL"),
        ({**GOOD, "token_endpoint": "javascript:alert(1)"}, "not an http(s) URL"),
        ({**GOOD, "token_endpoint": "ftp://ehr.example.org/token"}, "not an http(s) URL"),
        ({**GOOD, "token_endpoint": "https://a@evil.example/token"}, "user information"),
        ({**GOOD, "token_endpoint": "https://ehr.example.org/token#x"}, "fragment"),
        ({**GOOD, "token_endpoint": "http://ehr.example.org/token"}, "plain http"),
        ({**GOOD, "token_endpoint": "https://ehr.example.org:bad/token"}, "not a valid URL"),
        ([GOOD], "not a JSON object"),
        ("just a string", "not a JSON object"),
    ],
)
async def test_unusable_configuration_refused(doc: object, words: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        await discover(doc)
    assert words in str(info.value)
    assert BASE in str(info.value)
    assert info.value.status == 502 and info.value.error == "discovery_failed"


async def test_html_instead_of_json() -> None:
    http, _ = client(
        lambda r: httpx.Response(
            200, text="<html>login</html>", headers={"content-type": "text/html"}
        )
    )
    async with http:
        with pytest.raises(DiscoveryError, match=r"is not JSON \(text/html\)"):
            await DiscoveryCache(http).get(BASE)


@pytest.mark.parametrize("status", [500, 503, 401, 302])
async def test_http_error_status(status: int) -> None:
    http, _ = client(
        lambda r: httpx.Response(status, headers={"location": "https://evil.example/"})
    )
    async with http:
        with pytest.raises(DiscoveryError, match=f"answered HTTP {status}") as info:
            await DiscoveryCache(http, metadata_fallback=False).get(BASE)
    assert info.value.status == 502


async def test_timeout_is_504() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    http, _ = client(handler)
    async with http:
        with pytest.raises(DiscoveryError, match="did not answer") as info:
            await DiscoveryCache(http).get(BASE)
    assert info.value.status == 504


async def test_slow_server_hits_total_deadline() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=GOOD)

    http, _ = client(handler)
    async with http:
        with pytest.raises(DiscoveryError) as info:
            await DiscoveryCache(http, timeout=0.05).get(BASE)
    assert info.value.status == 504


async def test_connection_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http, _ = client(handler)
    async with http:
        with pytest.raises(DiscoveryError, match=r"could not reach .* \(ConnectError\)") as info:
            await DiscoveryCache(http).get(BASE)
    assert info.value.status == 502


async def test_huge_body_refused() -> None:
    http, _ = client(lambda r: httpx.Response(200, content=b" " * (2 << 20)))
    async with http:
        with pytest.raises(DiscoveryError, match="more than"):
            await DiscoveryCache(http).get(BASE)


async def test_unknown_issuer_shape_is_refused_before_network() -> None:
    http, counter = client(json_answer(GOOD))
    async with http:
        with pytest.raises(UnknownIssuer):
            await DiscoveryCache(http).get("https://user@ehr.example.org/fhir")
    assert counter.calls == []


CAPABILITY_STATEMENT = {
    "resourceType": "CapabilityStatement",
    "rest": [
        {
            "mode": "server",
            "security": {
                "extension": [
                    {
                        "url": OAUTH_URIS_EXTENSION,
                        "extension": [
                            {
                                "url": "authorize",
                                "valueUri": "https://ehr.example.org/auth/authorize",
                            },
                            {"url": "token", "valueUri": "https://ehr.example.org/auth/token"},
                            {"url": "revoke", "valueUri": "https://ehr.example.org/auth/revoke"},
                        ],
                    },
                    {
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/capabilities",
                        "valueCode": "launch-ehr",
                    },
                ]
            },
        }
    ],
}


def legacy_server(metadata: object) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            assert request.headers["accept"] == "application/fhir+json"
            return httpx.Response(200, content=orjson.dumps(metadata))
        return httpx.Response(404, text="not found")

    return handler


async def test_capability_statement_fallback(caplog: pytest.LogCaptureFixture) -> None:
    http, counter = client(legacy_server(CAPABILITY_STATEMENT))
    async with http:
        config = await DiscoveryCache(http).get(BASE)
    assert counter.calls == ["/fhir/.well-known/smart-configuration", "/fhir/metadata"]
    assert config.source == "capability-statement"
    assert config.token_endpoint == "https://ehr.example.org/auth/token"
    assert config.authorization_endpoint == "https://ehr.example.org/auth/authorize"
    assert config.revocation_endpoint == "https://ehr.example.org/auth/revoke"
    assert config.supports("launch-ehr")
    assert config.code_challenge_methods_supported == ()
    assert "PKCE support cannot be confirmed" in caplog.text


async def test_fallback_can_be_disabled() -> None:
    http, counter = client(legacy_server(CAPABILITY_STATEMENT))
    async with http:
        with pytest.raises(DiscoveryError, match="answered HTTP 404"):
            await DiscoveryCache(http, metadata_fallback=False).get(BASE)
    assert counter.calls == ["/fhir/.well-known/smart-configuration"]


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        (
            {"resourceType": "CapabilityStatement", "rest": [{"security": {}}]},
            "no SMART oauth-uris",
        ),
        ({"resourceType": "Patient"}, "not a CapabilityStatement"),
        (
            {
                "resourceType": "CapabilityStatement",
                "rest": [
                    {
                        "security": {
                            "extension": [
                                {
                                    "url": OAUTH_URIS_EXTENSION,
                                    "extension": [{"url": "authorize", "valueUri": "https://e/a"}],
                                }
                            ]
                        }
                    }
                ],
            },
            "no 'token_endpoint'",
        ),
    ],
)
async def test_bad_capability_statement(metadata: object, words: str) -> None:
    http, _ = client(legacy_server(metadata))
    async with http:
        with pytest.raises(DiscoveryError, match=words):
            await DiscoveryCache(http).get(BASE)


async def test_ttl_cache_with_injected_clock() -> None:
    now = [1000.0]
    http, counter = client(json_answer(GOOD))
    async with http:
        cache = DiscoveryCache(http, ttl=60, clock=lambda: now[0])
        first = await cache.get(BASE)
        assert await cache.get(BASE) is first
        now[0] += 59
        assert await cache.get(BASE + "/") is first
        assert len(counter.calls) == 1
        now[0] += 2
        second = await cache.get(BASE)
        assert second == first and second is not first
        assert len(counter.calls) == 2
        cache.invalidate(BASE)
        await cache.get(BASE)
        assert len(counter.calls) == 3
        cache.invalidate()
        await cache.get(BASE)
        assert len(counter.calls) == 4


async def test_failures_are_not_cached() -> None:
    answers = [httpx.Response(500), httpx.Response(200, json=GOOD)]
    http, counter = client(lambda r: answers.pop(0))
    async with http:
        cache = DiscoveryCache(http)
        with pytest.raises(DiscoveryError):
            await cache.get(BASE)
        assert (await cache.get(BASE)).token_endpoint == GOOD["token_endpoint"]
    assert len(counter.calls) == 2


async def test_single_flight_concurrent_callers_share_one_fetch() -> None:
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=GOOD)

    http, counter = client(handler)
    async with http:
        cache = DiscoveryCache(http)
        tasks = [asyncio.create_task(cache.get(BASE)) for _ in range(100)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks)
    assert len(counter.calls) == 1
    assert all(r is results[0] for r in results)


async def test_single_flight_shares_failures_too() -> None:
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(500)

    http, counter = client(handler)
    async with http:
        cache = DiscoveryCache(http)
        tasks = [asyncio.create_task(cache.get(BASE)) for _ in range(20)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert len(counter.calls) == 1
    assert all(isinstance(r, DiscoveryError) for r in results)


def test_resolve_endpoint_allows_http_for_http_base() -> None:
    assert resolve_endpoint("http://127.0.0.1:1/fhir", "/auth/token", "token_endpoint") == (
        "http://127.0.0.1:1/auth/token"
    )
