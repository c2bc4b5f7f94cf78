"""Token endpoint: exchange, refresh, revocation, response validation, single flight.

Faults (500, timeouts, HTML, OAuth errors with echoed secrets) come from an
``httpx.MockTransport`` on the one client under test; the successful flows
against a real authorization server are in ``test_integration_sandbox.py``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from jupyterhub_smart.smart.client_auth import ClientSecretBasic, PrivateKeyJWT, PublicClient
from jupyterhub_smart.smart.discovery import SMARTConfiguration
from jupyterhub_smart.smart.errors import TokenEndpointError
from jupyterhub_smart.smart.keys import generate_private_key
from jupyterhub_smart.smart.singleflight import SingleFlight
from jupyterhub_smart.smart.tokens import (
    TokenResponse,
    exchange_code,
    parse_token_response,
    refresh_access_token,
    revoke_token,
)

CODE = "authz-code-SECRET-0123456789"
VERIFIER = "v" * 50
REFRESH = "refresh-token-SECRET-abcdef"
ACCESS = "access-token-SECRET-xyz123"
CLIENT_SECRET = "client-secret-SECRET-987"
GOOD = {
    "access_token": ACCESS,
    "token_type": "bearer",
    "expires_in": 3600,
    "scope": "openid fhirUser launch patient/*.rs",
    "refresh_token": REFRESH,
    "id_token": "a.b.c",
    "patient": "p1",
}


class Recorder:
    def __init__(self, handler: Callable[[httpx.Request], Any]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result

    def form(self, i: int = -1) -> dict[str, str]:
        return dict(parse_qsl(self.requests[i].content.decode()))


def mock(handler: Callable[[httpx.Request], Any]) -> tuple[httpx.AsyncClient, Recorder]:
    recorder = Recorder(handler)
    return httpx.AsyncClient(transport=httpx.MockTransport(recorder)), recorder


def answer(body: object, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body)


async def do_exchange(
    config: SMARTConfiguration, handler: Callable[[httpx.Request], Any], **kwargs: Any
) -> TokenResponse:
    http, _ = mock(handler)
    async with http:
        return await exchange_code(
            http,
            config,
            kwargs.pop("client", PublicClient("hub")),
            code=CODE,
            redirect_uri="https://hub.example.org/hub/oauth_callback",
            code_verifier=VERIFIER,
            **kwargs,
        )


async def test_exchange_sends_the_right_form_and_validates(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    http, rec = mock(answer(GOOD))
    async with http:
        tokens = await exchange_code(
            http,
            config,
            PublicClient("hub"),
            code=CODE,
            redirect_uri="https://hub.example.org/hub/oauth_callback",
            code_verifier=VERIFIER,
        )
    request = rec.requests[0]
    assert request.method == "POST" and str(request.url) == config.token_endpoint
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert rec.form() == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": "https://hub.example.org/hub/oauth_callback",
        "code_verifier": VERIFIER,
        "client_id": "hub",
    }
    assert tokens.access_token == ACCESS and tokens.token_type == "Bearer"
    assert tokens.refresh_token == REFRESH and tokens.id_token == "a.b.c"
    assert tokens.scope == ("openid", "fhirUser", "launch", "patient/*.rs")
    assert tokens.raw["patient"] == "p1"
    assert tokens.expires_at is not None and tokens.expires_within(3601)
    assert not tokens.expires_within(10)
    for secret in (ACCESS, REFRESH, "a.b.c"):
        assert secret not in repr(tokens)


async def test_exchange_with_client_secret_basic(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    http, rec = mock(answer(GOOD))
    async with http:
        await exchange_code(
            http,
            config,
            ClientSecretBasic("hub", CLIENT_SECRET),
            code=CODE,
            redirect_uri="https://h/cb",
            code_verifier=VERIFIER,
        )
    auth = rec.requests[0].headers["authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == f"hub:{CLIENT_SECRET}"
    assert "client_id" not in rec.form()


async def test_exchange_with_private_key_jwt(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    client = PrivateKeyJWT("hub", generate_private_key("ES384"))
    http, rec = mock(answer(GOOD))
    async with http:
        await exchange_code(
            http, config, client, code=CODE, redirect_uri="https://h/cb", code_verifier=VERIFIER
        )
    form = rec.form()
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["client_assertion"].count(".") == 2
    assert "client_id" not in form and "authorization" not in rec.requests[0].headers


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("invalid_grant", 400),
        ("invalid_client", 502),
        ("unauthorized_client", 502),
        ("invalid_request", 502),
        ("invalid_scope", 502),
    ],
)
async def test_oauth_error_json(
    code: str, status: int, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    with pytest.raises(TokenEndpointError) as info:
        await do_exchange(config, answer({"error": code, "error_description": "nope"}, 400))
    assert info.value.oauth_error == code
    assert info.value.status == status
    assert f"refused the request: {code} (nope)" in str(info.value)


async def test_oauth_error_description_is_sanitised(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    description = f"code {CODE} was used\r\nby {CLIENT_SECRET} \x1b[31m" + "x" * 500
    with pytest.raises(TokenEndpointError) as info:
        await do_exchange(
            config,
            answer({"error": "invalid_grant", "error_description": description}, 400),
            client=ClientSecretBasic("hub", CLIENT_SECRET),
        )
    message = str(info.value)
    assert CODE not in message and CLIENT_SECRET not in message
    assert "[redacted]" in message
    assert "\r" not in message and "\n" not in message and "\x1b" not in message
    assert len(message) < 300


async def test_assertion_echoed_in_description_is_redacted(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    client = PrivateKeyJWT("hub", generate_private_key("ES384"))

    def handler(request: httpx.Request) -> httpx.Response:
        assertion = dict(parse_qsl(request.content.decode()))["client_assertion"]
        return httpx.Response(
            401, json={"error": "invalid_client", "error_description": f"bad {assertion}"}
        )

    with pytest.raises(TokenEndpointError) as info:
        await do_exchange(config, handler, client=client)
    assert "eyJ" not in str(info.value) and "[redacted]" in str(info.value)


async def test_weird_error_code_replaced(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    with pytest.raises(TokenEndpointError) as info:
        await do_exchange(config, answer({"error": 'evil"\ncode'}, 400))
    assert info.value.oauth_error == "invalid_error_code"


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_error_is_502_and_body_not_echoed(
    status: int, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    body = {"access_token": ACCESS, "trace": "stack"}
    with pytest.raises(TokenEndpointError) as info:
        await do_exchange(config, answer(body, status))
    assert info.value.status == 502 and info.value.oauth_error is None
    assert f"answered HTTP {status}" in str(info.value)
    assert ACCESS not in str(info.value)


async def test_4xx_without_oauth_error(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    with pytest.raises(TokenEndpointError, match="answered HTTP 404") as info:
        await do_exchange(config, lambda r: httpx.Response(404, text="<html>not found</html>"))
    assert info.value.status == 502


async def test_redirect_is_not_followed(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    http, rec = mock(lambda r: httpx.Response(307, headers={"location": "https://evil.example/t"}))
    async with http:
        with pytest.raises(TokenEndpointError, match="answered HTTP 307"):
            await exchange_code(
                http,
                config,
                PublicClient("hub"),
                code=CODE,
                redirect_uri="x",
                code_verifier=VERIFIER,
            )
    assert len(rec.requests) == 1


async def test_timeout_is_504(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TokenEndpointError, match="did not answer") as info:
        await do_exchange(config, handler)
    assert info.value.status == 504


async def test_total_deadline(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=GOOD)

    with pytest.raises(TokenEndpointError) as info:
        await do_exchange(config, handler, timeout=0.05)
    assert info.value.status == 504


async def test_connection_reset(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer", request=request)

    with pytest.raises(TokenEndpointError, match=r"could not be reached \(ReadError\)") as info:
        await do_exchange(config, handler)
    assert info.value.status == 502


async def test_html_instead_of_json(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    with pytest.raises(TokenEndpointError, match="text/html instead of JSON") as info:
        await do_exchange(
            config,
            lambda r: httpx.Response(200, text="<html>", headers={"content-type": "text/html"}),
        )
    assert info.value.status == 502


async def test_oversized_body(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    with pytest.raises(TokenEndpointError, match="oversized"):
        await do_exchange(config, lambda r: httpx.Response(200, content=b"x" * (2 << 20)))


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (without("access_token"), "no access_token"),
        ({**GOOD, "access_token": ""}, "no access_token"),
        ({**GOOD, "access_token": 42}, "no access_token"),
        (without("token_type"), "no token_type"),
        ({**GOOD, "token_type": "DPoP"}, "only Bearer"),
        ({**GOOD, "expires_in": "soon"}, "expires_in"),
        ({**GOOD, "expires_in": -1}, "expires_in"),
        ({**GOOD, "expires_in": True}, "expires_in"),
        ({**GOOD, "refresh_token": 5}, "refresh_token"),
        ({**GOOD, "id_token": ["x"]}, "id_token"),
        ({**GOOD, "scope": ["openid"]}, "scope"),
        ([GOOD], "not an object"),
    ],
)
async def test_invalid_success_body(
    body: object, words: str, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    with pytest.raises(TokenEndpointError, match=words) as info:
        await do_exchange(config, answer(body))
    assert info.value.status == 502
    assert ACCESS not in str(info.value) and REFRESH not in str(info.value)


def test_parse_variants() -> None:
    tokens = parse_token_response({**GOOD, "expires_in": "60"}, now=1000.0)
    assert tokens.expires_at == 1060.0
    assert tokens.expires_within(60, now=1000.0) and not tokens.expires_within(59, now=1000.0)
    no_expiry = parse_token_response(without("expires_in"))
    assert no_expiry.expires_at is None and not no_expiry.expires_within(10**9)
    assert parse_token_response(without("scope")).scope == ()
    assert parse_token_response(without("scope"), requested_scope="openid launch").scope == (
        "openid",
        "launch",
    )
    assert parse_token_response(without("scope"), requested_scope=["a", "b a"]).scope == ("a", "b")
    assert parse_token_response({**GOOD, "scope": ""}).scope == ()
    assert parse_token_response(without("refresh_token")).refresh_token is None


async def test_refresh_form_and_scope_narrowing(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    http, rec = mock(answer(without("scope")))
    async with http:
        tokens = await refresh_access_token(
            http, config, PublicClient("hub"), REFRESH, requested_scope="openid patient/*.rs"
        )
        assert rec.form() == {
            "grant_type": "refresh_token",
            "refresh_token": REFRESH,
            "client_id": "hub",
        }
        assert tokens.scope == ("openid", "patient/*.rs")
        narrowed = await refresh_access_token(
            http, config, PublicClient("hub"), REFRESH, scope=["patient/Observation.rs"]
        )
        assert rec.form()["scope"] == "patient/Observation.rs"
        assert narrowed.scope == ("patient/Observation.rs",)


async def test_refresh_invalid_grant_is_400(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:
    config = smart_config()
    http, _ = mock(answer({"error": "invalid_grant"}, 400))
    async with http:
        with pytest.raises(TokenEndpointError) as info:
            await refresh_access_token(http, config, PublicClient("hub"), REFRESH)
    assert info.value.oauth_error == "invalid_grant" and info.value.status == 400
    assert REFRESH not in str(info.value)


async def test_revoke(smart_config: Callable[..., SMARTConfiguration]) -> None:
    config = smart_config()
    http, rec = mock(lambda r: httpx.Response(200))
    async with http:
        assert await revoke_token(http, config, PublicClient("hub"), REFRESH) is True
        assert str(rec.requests[0].url) == config.revocation_endpoint
        assert rec.form() == {
            "token": REFRESH,
            "token_type_hint": "refresh_token",
            "client_id": "hub",
        }
        assert await revoke_token(http, config, PublicClient("hub"), ACCESS, "") is True
        assert rec.form() == {"token": ACCESS, "client_id": "hub"}


async def test_revoke_without_endpoint_makes_no_request(
    smart_config: Callable[..., SMARTConfiguration],
) -> None:

    http, rec = mock(lambda r: httpx.Response(200))
    async with http:
        assert (
            await revoke_token(
                http, smart_config(revocation_endpoint=None), PublicClient("hub"), REFRESH
            )
            is False
        )
    assert rec.requests == []


@pytest.mark.parametrize(
    ("status", "body"), [(503, None), (400, {"error": "unsupported_token_type"})]
)
async def test_revoke_failures(
    status: int, body: object, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    http, _ = mock(lambda r: httpx.Response(status, json=body))
    async with http:
        with pytest.raises(TokenEndpointError, match="revocation endpoint") as info:
            await revoke_token(http, config, PublicClient("hub"), REFRESH)
    assert REFRESH not in str(info.value)


async def test_no_secret_reaches_the_log(
    caplog: pytest.LogCaptureFixture, smart_config: Callable[..., SMARTConfiguration]
) -> None:
    config = smart_config()
    caplog.set_level(logging.DEBUG)
    for handler in (
        answer({"error": "invalid_grant", "error_description": CODE}, 400),
        answer(GOOD, 500),
        answer(without("access_token")),
    ):
        with pytest.raises(TokenEndpointError) as info:
            await do_exchange(config, handler, client=ClientSecretBasic("hub", CLIENT_SECRET))
        logging.getLogger("test").error("login failed: %s", info.value)
    for secret in (CODE, ACCESS, REFRESH, CLIENT_SECRET, VERIFIER):
        assert secret not in caplog.text


# --- single flight -------------------------------------------------------------


async def test_single_flight_200_concurrent_callers_one_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def refresh() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return f"token-{calls}"

    tasks = [asyncio.create_task(flight.run("user-1", refresh)) for _ in range(200)]
    await asyncio.sleep(0)
    assert flight.in_flight("user-1")
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1 and set(results) == {"token-1"}
    assert not flight.in_flight("user-1")
    assert await flight.run("user-1", refresh) == "token-2"  # a later call runs again


async def test_single_flight_start_is_in_flight_before_any_await() -> None:
    """A caller that waits in a task of its own (``wait_for``) leaves no gap in which a
    second caller sees nothing in flight and starts, or rate-limits, a second call."""
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def refresh() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "token"

    started = flight.start("user-1", refresh)
    assert flight.in_flight("user-1")  # no await between the start and this check
    assert flight.start("user-1", refresh) is started
    waiting = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(started), 0.01))
    with pytest.raises(asyncio.TimeoutError):
        await waiting
    assert flight.in_flight("user-1")  # giving up did not cancel the call
    release.set()
    assert await flight.run("user-1", refresh) == "token"
    assert calls == 1 and not flight.in_flight("user-1")


async def test_single_flight_keys_are_independent() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls: list[str] = []

    def make(key: str) -> Callable[[], Any]:
        async def work() -> str:
            calls.append(key)
            await release.wait()
            return key

        return work

    tasks = [asyncio.create_task(flight.run(k, make(k))) for k in ("a", "b", "a", "b")]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*tasks) == ["a", "b", "a", "b"]
    assert sorted(calls) == ["a", "b"]


async def test_single_flight_shares_exceptions() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def fail() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise TokenEndpointError("refresh refused", oauth_error="invalid_grant", status=400)

    tasks = [asyncio.create_task(flight.run("k", fail)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(
        isinstance(r, TokenEndpointError) and r.oauth_error == "invalid_grant" for r in results
    )


async def test_single_flight_cancelled_caller_does_not_cancel_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    first = asyncio.create_task(flight.run("k", work))
    second = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await second == "done"
    with pytest.raises(asyncio.CancelledError):
        await first
