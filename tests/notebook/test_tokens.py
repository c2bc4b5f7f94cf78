"""Token providers: the hub token API contract, caching, single fetch, errors."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import httpx
import pytest

from jupyterhub_smart.notebook import (
    CallableTokenProvider,
    HubTokenProvider,
    ReauthenticationRequired,
    StaticTokenProvider,
    TokenUnavailable,
)
from jupyterhub_smart.smart.fingerprint import access_token_fingerprint as token_fingerprint

from .fakes import FHIR_BASE, HUB_API, FakeTokenAPI, json_response, secret


def hub(api: FakeTokenAPI, **kwargs: object) -> HubTokenProvider:
    return HubTokenProvider(HUB_API, api.api_token, transport=api.transport(), **kwargs)  # type: ignore[arg-type]


def test_hub_token_and_context() -> None:
    api = FakeTokenAPI(secret("api"))
    info = hub(api).get()
    assert info.access_token == api.tokens[0]
    assert info.fhir_base_url == FHIR_BASE
    assert info.patient == "p1" and info.encounter is None
    assert info.fhir_user == "Practitioner/practitioner-1"
    assert info.scopes == ("launch/patient", "openid", "fhirUser", "patient/*.rs")
    assert info.need_patient_banner is True


def test_scope_may_be_a_list() -> None:
    api = FakeTokenAPI(secret("api"), extra={"scope": ["openid", "patient/Observation.rs"]})
    assert hub(api).get().scopes == ("openid", "patient/Observation.rs")


def test_token_is_cached_until_shortly_before_expiry() -> None:
    api = FakeTokenAPI(secret("api"), lifetime=3600)
    provider = hub(api)
    first = provider.get()
    assert provider.get() is first and api.calls == 1
    short = FakeTokenAPI(secret("api"), lifetime=0.4)
    provider = hub(short)
    token = provider.get().access_token
    time.sleep(0.45)  # past expiry: the next call must fetch (not a timing assertion)
    assert provider.get().access_token != token
    assert short.calls == 2


def test_invalidate_drops_only_the_refused_token() -> None:
    api = FakeTokenAPI(secret("api"))
    provider = hub(api)
    first = provider.get()
    provider.invalidate("some-other-token")
    assert provider.get() is first
    provider.invalidate(first.access_token)
    assert provider.get().access_token != first.access_token
    assert api.calls == 2


def test_refused_token_is_reported_to_the_hub_by_its_sha256_once() -> None:
    """After a 401, the next fetch names the refused token by hash; later fetches do not."""
    api = FakeTokenAPI(secret("api"), lifetime=0.4)
    seen: list[httpx.URL] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return api(request)

    provider = HubTokenProvider(HUB_API, api.api_token, transport=httpx.MockTransport(record))
    first = provider.get()
    assert "rejected" not in seen[0].params
    provider.invalidate(first.access_token)
    provider.invalidate(first.access_token)  # a burst of 401s on one token: one report
    second = provider.get()
    assert second.access_token != first.access_token
    expected = hashlib.sha256(first.access_token.encode()).hexdigest()
    assert seen[1].params["rejected"] == expected == token_fingerprint(first.access_token)
    assert first.access_token not in str(seen[1])
    provider.invalidate(first.access_token)  # an old token: nothing to report, no fetch
    assert provider.get() is second and len(seen) == 2
    time.sleep(0.45)  # past expiry: the next fetch is not a report (not a timing assertion)
    provider.get()
    assert len(seen) == 3 and "rejected" not in seen[2].params


def test_refused_token_is_reported_again_until_the_hub_replaces_it() -> None:
    """Reauthentication (or a 429) keeps the report, so the hub keeps answering from it."""
    api = FakeTokenAPI(secret("api"))
    provider = hub(api)
    first = provider.get()
    seen: list[httpx.URL] = []

    def reauthenticate(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return json_response(
            401, {"error": "reauthentication_required", "login_url": "/hub/oauth_login"}
        )

    api.answer = reauthenticate
    provider.invalidate(first.access_token)
    for _ in range(2):
        with pytest.raises(ReauthenticationRequired):
            provider.get()
    assert [u.params["rejected"] for u in seen] == [token_fingerprint(first.access_token)] * 2


def test_hub_rate_limit_on_forced_refresh_says_what_happened() -> None:
    api = FakeTokenAPI(secret("api"))
    provider = hub(api)
    provider.invalidate(provider.get().access_token)
    api.answer = lambda request: json_response(
        429,
        {"error": "refresh_rate_limited", "message": "not again for 12 s", "retry_after": 12},
        headers={"Retry-After": "12"},
    )
    with pytest.raises(
        TokenUnavailable, match=r"will not refresh it again yet \(429\).*not again for 12 s"
    ):
        provider.get()


def test_threads_share_one_fetch() -> None:
    api = FakeTokenAPI(secret("api"), delay=0.3)
    provider = hub(api)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(provider.get().access_token)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert api.calls == 1
    assert len(set(results)) == 1 and len(results) == 8


async def test_asyncio_tasks_share_one_fetch() -> None:
    api = FakeTokenAPI(secret("api"), delay=0.3)
    provider = hub(api)
    infos = await asyncio.gather(*(provider.aget() for _ in range(20)))
    assert api.calls == 1
    assert len({i.access_token for i in infos}) == 1


async def test_threads_and_tasks_together_share_one_fetch() -> None:
    api = FakeTokenAPI(secret("api"), delay=0.3)
    provider = hub(api)
    threads = [threading.Thread(target=provider.get) for _ in range(4)]
    for t in threads:
        t.start()
    await asyncio.gather(*(provider.aget() for _ in range(10)))
    for t in threads:
        t.join()
    assert api.calls == 1


def test_token_api_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    provider = HubTokenProvider(
        HUB_API, secret("api"), transport=httpx.MockTransport(refuse), retries=1
    )
    with pytest.raises(
        TokenUnavailable, match=r"could not reach the hub's token API at http://hub.test"
    ):
        provider.get()


def test_token_api_401_without_reauthentication() -> None:
    api = FakeTokenAPI(secret("api"))
    provider = HubTokenProvider(HUB_API, secret("wrong"), transport=api.transport())
    with pytest.raises(TokenUnavailable, match="did not accept this server's API token") as info:
        provider.get()
    assert not isinstance(info.value, ReauthenticationRequired)


def test_token_api_403_another_users_token() -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: json_response(403, {"status": 403, "message": "Forbidden"})
    with pytest.raises(TokenUnavailable, match=r"403.*another user"):
        hub(api).get()


def test_token_api_404_names_the_url() -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: httpx.Response(404, text="not found")
    with pytest.raises(TokenUnavailable, match=r"no token API at http://hub.test"):
        hub(api).get()


def _reauthenticate(login_url: str) -> ReauthenticationRequired:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: json_response(
        401, {"error": "reauthentication_required", "login_url": login_url}
    )
    with pytest.raises(ReauthenticationRequired) as info:
        hub(api).get()
    return info.value


def test_reauthentication_path_is_not_joined_to_the_hubs_internal_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel's hub address (``http://hub.test`` here, ``http://hub:8081`` on Kubernetes)
    is not the browser's: a path stays a path, which the notebook page resolves."""
    monkeypatch.delenv("JUPYTERHUB_PUBLIC_HUB_URL", raising=False)
    error = _reauthenticate("/hub/login?next=%2Fhub%2F")
    assert error.login_url == "/hub/login?next=%2Fhub%2F"
    assert "hub.test" not in str(error)
    assert "open /hub/login?next=%2Fhub%2F on this JupyterHub's address" in str(error)


def test_reauthentication_path_uses_the_public_hub_url_when_jupyterhub_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_HUB_URL", "https://hub.example.org/hub/")
    error = _reauthenticate("/hub/oauth_login")
    assert error.login_url == "https://hub.example.org/hub/oauth_login"
    assert "open https://hub.example.org/hub/oauth_login in your browser" in str(error)
    # an absolute URL from the hub (it knows its public_url) is kept as it is
    assert _reauthenticate("https://other.example/hub/oauth_login").login_url == (
        "https://other.example/hub/oauth_login"
    )


@pytest.mark.parametrize("login_url", ["//evil.example/x", "/\\evil.example/x", "/a b", "hub"])
def test_reauthentication_with_a_link_off_the_page_is_dropped(login_url: str) -> None:
    error = _reauthenticate(login_url)
    assert error.login_url is None
    assert "sign in to JupyterHub again" in str(error)


def test_reauthentication_with_a_script_url_does_not_show_it() -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: json_response(
        401, {"error": "reauthentication_required", "login_url": "javascript:alert(1)"}
    )
    with pytest.raises(ReauthenticationRequired) as info:
        hub(api).get()
    assert info.value.login_url is None
    assert "javascript" not in str(info.value)
    assert "sign in to JupyterHub again" in str(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"token_type": "Bearer", "expires_at": 1, "fhir_base_url": FHIR_BASE},
            "no 'access_token'",
        ),
        (
            {"access_token": "SECRET", "expires_at": "soon", "fhir_base_url": FHIR_BASE},
            "'expires_at'",
        ),
        ({"access_token": "SECRET", "expires_at": 1e12}, "without 'fhir_base_url'"),
        ({"access_token": "SECRET", "expires_at": 1e12, "fhir_base_url": "file:///etc"}, "http"),
        ({"access_token": "SECRET", "token_type": "MAC", "fhir_base_url": FHIR_BASE}, "Bearer"),
        ({"access_token": "SECRET", "scope": 7, "fhir_base_url": FHIR_BASE}, "'scope'"),
    ],
)
def test_malformed_token_api_answers(body: dict[str, object], message: str) -> None:
    token = secret("access")
    body = {k: (token if v == "SECRET" else v) for k, v in body.items()}
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: json_response(200, body)
    with pytest.raises(TokenUnavailable, match=message) as info:
        hub(api).get()
    assert token not in str(info.value)


def test_token_api_not_json() -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: httpx.Response(200, text="<html>login</html>")
    with pytest.raises(TokenUnavailable, match="did not answer JSON"):
        hub(api).get()


def test_token_api_url_must_be_http() -> None:
    with pytest.raises(TokenUnavailable, match="not an http"):
        HubTokenProvider("ftp://hub/token", secret("api"))


def test_static_provider_never_refetches() -> None:
    token = secret("static")
    provider = StaticTokenProvider(token, FHIR_BASE + "/")
    assert provider.get().access_token == token
    assert provider.get().fhir_base_url == FHIR_BASE
    provider.invalidate(token)
    assert provider.get().access_token == token  # nothing else to hand out
    with pytest.raises(TypeError):
        StaticTokenProvider("  ", FHIR_BASE)


def test_callable_provider_accepts_str_dict_and_refetches_near_expiry() -> None:
    tokens = [secret("cb"), secret("cb")]
    calls: list[int] = []

    def mint() -> dict[str, object]:
        calls.append(1)
        return {"access_token": tokens[len(calls) - 1], "expires_in": 0.2, "scope": "system/*.rs"}

    provider = CallableTokenProvider(mint, FHIR_BASE)
    first = provider.get()
    assert first.scopes == ("system/*.rs",) and first.fhir_base_url == FHIR_BASE
    time.sleep(0.25)
    assert provider.get().access_token == tokens[1]
    plain = CallableTokenProvider(lambda: tokens[0], FHIR_BASE)
    assert plain.get().access_token == tokens[0] and plain.get().expires_at is None
    with pytest.raises(TokenUnavailable, match="must return a token string"):
        CallableTokenProvider(lambda: 42, FHIR_BASE).get()  # type: ignore[arg-type,return-value]


def test_ehr_unavailable_is_retried_then_says_what_the_hub_said() -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: json_response(
        503, {"error": "ehr_unavailable", "message": "The EHR's token endpoint timed out."}
    )
    provider = HubTokenProvider(HUB_API, api.api_token, transport=api.transport(), retries=1)
    with pytest.raises(TokenUnavailable, match=r"HTTP 503 \(the hub says: The EHR's token"):
        provider.get()
    assert api.calls == 2


def test_hub_outage_waits_what_retry_after_asks_then_gets_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeTokenAPI(secret("api"))
    outage = [json_response(503, {"error": "database_unavailable"}, {"Retry-After": "7"})]
    waits: list[float] = []
    monkeypatch.setattr("jupyterhub_smart.notebook.tokens.time.sleep", waits.append)

    def answer(request: httpx.Request) -> httpx.Response:
        api.answer = None  # the outage is over after this answer
        return outage.pop()

    api.answer = answer
    provider = HubTokenProvider(HUB_API, api.api_token, transport=api.transport(), retries=2)
    assert provider.get().access_token == api.tokens[-1]
    assert waits == [7.0] and api.calls == 2


def test_hub_back_off_longer_than_the_limit_is_an_error_saying_when(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeTokenAPI(secret("api"))
    api.answer = lambda request: json_response(
        503,
        {"error": "ehr_unavailable", "message": "The EHR is not answering."},
        {"Retry-After": "300"},
    )
    waits: list[float] = []
    monkeypatch.setattr("jupyterhub_smart.notebook.tokens.time.sleep", waits.append)
    provider = HubTokenProvider(
        HUB_API, api.api_token, transport=api.transport(), retries=2, max_retry_after=60
    )
    with pytest.raises(TokenUnavailable, match=r"HTTP 503 .*; try again in 300 s"):
        provider.get()
    assert waits == [] and api.calls == 1
