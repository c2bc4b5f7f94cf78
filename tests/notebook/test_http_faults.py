"""Faults of a FHIR server that the sandbox does not produce on demand (MockTransport per client).

The token side is the real provider code over a fake hub token API; the
client, its retry policy, paging and error reporting are ours and run as is.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from jupyterhub_smart.notebook import (
    AsyncSMARTClient,
    FHIRConnectionError,
    FHIRError,
    HubTokenProvider,
    RetryPolicy,
    SMARTClient,
    StaticTokenProvider,
    UnsafeURL,
)
from jupyterhub_smart.notebook.events import DataAccessEvent
from jupyterhub_smart.notebook.http import parse_retry_after

from .fakes import FHIR_BASE, HUB_API, FakeTokenAPI, json_response, outcome, secret

FAST = RetryPolicy(max_retries=2, backoff=0.01, max_backoff=0.02, max_retry_after=5)
Handler = Callable[[httpx.Request], httpx.Response]


class FHIRFake:
    """Records requests (URL and bearer token) and answers with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    @property
    def tokens(self) -> list[str]:
        return [r.headers.get("Authorization", "").removeprefix("Bearer ") for r in self.requests]


def client_for(
    handler: Handler, *, api: FakeTokenAPI | None = None, static: bool = False
) -> tuple[SMARTClient, FHIRFake, FakeTokenAPI]:
    api = api or FakeTokenAPI(secret("api"), extra={"scope": "system/*.rs"})
    fake = FHIRFake(handler)
    provider: Any
    if static:
        provider = StaticTokenProvider(secret("static"), FHIR_BASE)
    else:
        provider = HubTokenProvider(HUB_API, api.api_token, transport=api.transport())
    client = SMARTClient(provider, retry=FAST, transport=httpx.MockTransport(fake))
    return client, fake, api


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def bundle(entries: list[dict[str, Any]] | None, next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": []}
    if entries is not None:
        body["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in entries]
    if next_url:
        body["link"].append({"relation": "next", "url": next_url})
    return body


def test_401_then_one_fresh_token_and_one_retry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if len(fake_ref[0].requests) == 1:
            return json_response(401, outcome("token expired", "login"))
        return json_response(200, patient())

    fake_ref: list[FHIRFake] = []
    client, fake, api = client_for(handler)
    fake_ref.append(fake)
    assert client.read("Patient", "p1")["id"] == "p1"
    assert api.calls == 2
    assert fake.tokens == api.tokens  # first token, then the fresh one
    assert fake.tokens[0] != fake.tokens[1]


def test_401_for_every_token_is_an_error_after_two_new_tokens() -> None:
    client, fake, api = client_for(lambda r: json_response(401, outcome("invalid token", "login")))
    with pytest.raises(FHIRError, match=r"HTTP 401.*invalid token") as info:
        client.read("Patient", "p1")
    assert info.value.status == 401
    assert len(fake.requests) == 3 and api.calls == 3  # bounded: never a loop
    assert fake.tokens == api.tokens and len(set(fake.tokens)) == 3


def test_401_with_a_static_token_is_not_retried() -> None:
    client, fake, _ = client_for(lambda r: json_response(401, {}), static=True)
    with pytest.raises(FHIRError, match="HTTP 401") as info:
        client.read("Patient", "p1")
    assert len(fake.requests) == 1
    assert "refused even after fetching a new one" in str(info.value)


def test_403_carries_the_operation_outcome() -> None:
    text = "the token's scopes do not allow read of Patient"
    client, _, _ = client_for(lambda r: json_response(403, outcome(text)))
    with pytest.raises(FHIRError) as info:
        client.read("Patient", "p1")
    assert info.value.status == 403
    assert info.value.diagnostics == [text]
    assert info.value.outcome is not None
    assert text in str(info.value) and "https://ehr.test/fhir/Patient/p1" in str(info.value)


def test_404_without_outcome_still_explains() -> None:
    client, _, _ = client_for(lambda r: httpx.Response(404, text="nope"))
    with pytest.raises(FHIRError, match="HTTP 404 Not Found: not found") as info:
        client.read("Patient", "p1")
    assert info.value.status == 404 and info.value.diagnostics == []


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status: int, caplog: pytest.LogCaptureFixture) -> None:
    answers = [json_response(status, outcome("slow down", "throttled"), {"Retry-After": "1"})]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else json_response(200, patient())

    client, fake, _ = client_for(handler)
    assert client.read("Patient", "p1")["id"] == "p1"
    assert len(fake.requests) == 2
    assert f"HTTP {status}; retry 1/2 in 1.0 s (Retry-After)" in caplog.text


def test_retry_after_http_date_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    when = email.utils.formatdate(time.time() + 1, usegmt=True)
    answers = [json_response(503, {}, {"Retry-After": when})]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else json_response(200, patient())

    client, fake, _ = client_for(handler)
    client.read("Patient", "p1")
    assert len(fake.requests) == 2 and "(Retry-After)" in caplog.text


@pytest.mark.parametrize("status", [429, 503])
def test_retries_without_retry_after_are_bounded(status: int) -> None:
    client, fake, _ = client_for(lambda r: json_response(status, outcome("busy", "throttled")))
    with pytest.raises(FHIRError, match=f"HTTP {status}.*busy") as info:
        client.read("Patient", "p1")
    assert info.value.status == status
    assert len(fake.requests) == FAST.max_retries + 1


def test_a_retry_after_longer_than_allowed_fails_at_once() -> None:
    client, fake, _ = client_for(lambda r: json_response(429, {}, {"Retry-After": "3600"}))
    with pytest.raises(FHIRError, match="retry in 3600 s, longer than max_retry_after=5 s"):
        client.read("Patient", "p1")
    assert len(fake.requests) == 1


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


def test_tcp_errors_are_retried_then_name_the_url() -> None:
    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer", request=request)

    client, fake, _ = client_for(reset)
    with pytest.raises(
        FHIRConnectionError,
        match=r"could not reach the FHIR server at https://ehr\.test/fhir/Patient/p1: ReadError",
    ):
        client.read("Patient", "p1")
    assert len(fake.requests) == FAST.max_retries + 1


def test_a_tcp_error_then_success() -> None:
    failures = [1]

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures:
            failures.pop()
            raise httpx.ConnectError("connection refused", request=request)
        return json_response(200, patient())

    client, _, _ = client_for(flaky)
    assert client.read("Patient", "p1")["id"] == "p1"


def test_malformed_json() -> None:
    client, _, _ = client_for(
        lambda r: httpx.Response(200, content=b'{"resourceType": "Bundle", "entry": [')
    )
    with pytest.raises(FHIRError, match="not valid JSON"):
        list(client.search("Patient"))


def test_json_that_is_not_a_resource() -> None:
    client, _, _ = client_for(lambda r: json_response(200, [1, 2]))
    with pytest.raises(FHIRError, match="not a FHIR resource"):
        client.read("Patient", "p1")


def test_malformed_bundle_entry() -> None:
    client, _, _ = client_for(
        lambda r: json_response(200, {"resourceType": "Bundle", "entry": {"resource": {}}})
    )
    with pytest.raises(FHIRError, match="malformed Bundle: 'entry' is not a list"):
        client.search("Patient").to_pandas()
    client, _, _ = client_for(
        lambda r: json_response(200, {"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]})
    )
    with pytest.raises(FHIRError, match="an entry has no resource"):
        list(client.search("Patient"))


def test_search_answered_with_something_else_than_a_bundle() -> None:
    client, _, _ = client_for(lambda r: json_response(200, patient()))
    with pytest.raises(FHIRError, match="expected a Bundle, got 'Patient'"):
        list(client.search("Patient"))


def test_page_without_entry_is_an_empty_page() -> None:
    pages = {
        "first": bundle([patient("a")], f"{FHIR_BASE}/Patient?_cursor=2"),
        "2": bundle(None, f"{FHIR_BASE}/Patient?_cursor=3"),
        "3": bundle([patient("b")]),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(200, pages[request.url.params.get("_cursor", "first")])

    client, fake, _ = client_for(handler)
    frame = client.search("Patient").to_pandas()
    assert frame["id"].tolist() == ["a", "b"]
    assert len(fake.requests) == 3
    client, _, _ = client_for(lambda r: json_response(200, bundle(None)))
    empty = client.search("Observation").to_pandas()
    assert empty.empty and "effective" in empty.columns


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.test/fhir/Patient?page=2",
        "http://ehr.test/fhir/Patient?page=2",
        "https://ehr.test:8443/fhir/Patient?page=2",
        "https://ehr.test/other-tenant/Patient?page=2",
        "https://ehr.test/fhir/../admin/Patient",
        "https://ehr.test/fhir/%2e%2e/admin/Patient",
        "https://ehr.test/fhir/%2E%2E%2fadmin",
        "https://ehr.test/fhir/..%5cadmin",
        "https://ehr.test@evil.test/fhir/Patient",
        "https://ehr.test/fhirx/Patient",
        "/elsewhere/Patient?page=2",
    ],
)
def test_next_link_off_the_fhir_base_is_refused(link: str) -> None:
    client, fake, _ = client_for(lambda r: json_response(200, bundle([patient("a")], link)))
    with pytest.raises(UnsafeURL, match="refused to send the access token"):
        client.search("Patient").to_pandas()
    assert [str(r.url.host) for r in fake.requests] == ["ehr.test"]
    assert len(fake.requests) == 1  # nothing was sent to the other place


def test_relative_next_link_on_the_base_is_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "page" in request.url.params:
            return json_response(200, bundle([patient("b")]))
        return json_response(200, bundle([patient("a")], "/fhir/Patient?page=2"))

    client, _, _ = client_for(handler)
    assert [r["id"] for r in client.search("Patient")] == ["a", "b"]


def test_paging_loop_is_stopped() -> None:
    client, _, _ = client_for(
        lambda r: json_response(200, bundle([patient("a")], f"{FHIR_BASE}/Patient?page=2"))
    )
    with pytest.raises(FHIRError, match="paging loops"):
        client.search("Patient").to_pandas()


def test_operation_outcome_entry_is_logged_not_a_row(caplog: pytest.LogCaptureFixture) -> None:
    body = bundle([patient("a")])
    body["entry"].append(
        {"resource": outcome("results limited", "informational"), "search": {"mode": "outcome"}}
    )
    client, _, _ = client_for(lambda r: json_response(200, body))
    assert client.search("Patient").to_pandas()["id"].tolist() == ["a"]
    assert "results limited" in caplog.text


async def test_async_client_has_the_same_policy() -> None:
    api = FakeTokenAPI(secret("api"), extra={"scope": "system/*.rs"})
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if len(seen) == 1:
            return json_response(401, {})
        if len(seen) == 2:
            return json_response(503, {}, {"Retry-After": "0"})
        if "page" in request.url.params:
            return json_response(200, bundle([patient("b")], "https://evil.test/fhir/x"))
        return json_response(200, bundle([patient("a")], f"{FHIR_BASE}/Patient?page=2"))

    provider = HubTokenProvider(HUB_API, api.api_token, transport=api.transport())
    async with AsyncSMARTClient(
        provider, retry=FAST, transport=httpx.MockTransport(handler)
    ) as client:
        result = await client.search("Patient")
        ids = []
        with pytest.raises(UnsafeURL):
            async for resource in result:
                ids.append(resource["id"])
        assert ids == ["a", "b"]
    assert api.calls == 2 and len(seen) == 4


def test_errors_never_hold_the_token() -> None:
    client, fake, _ = client_for(lambda r: json_response(401, outcome("bad token", "login")))
    with pytest.raises(FHIRError) as info:
        client.read("Patient", "p1")
    for token in fake.tokens:
        assert token not in str(info.value) and token not in repr(info.value.__dict__)


def test_a_failing_event_sink_does_not_break_reads(caplog: pytest.LogCaptureFixture) -> None:
    def sink(event: object) -> None:
        raise RuntimeError("audit backend down")

    api = FakeTokenAPI(secret("api"), extra={"scope": "system/*.rs"})
    provider = HubTokenProvider(HUB_API, api.api_token, transport=api.transport())
    client = SMARTClient(
        provider,
        transport=httpx.MockTransport(lambda r: json_response(200, patient())),
        event_sink=sink,
    )
    assert client.read("Patient", "p1")["id"] == "p1"
    assert "data-access event sink failed: RuntimeError" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"max_retries": 100}, {"backoff": -1}, {"max_retry_after": float("nan")}],
)
def test_retry_policy_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_plain_http_to_another_machine_is_refused() -> None:
    sent: list[httpx.Request] = []
    handler = lambda r: sent.append(r) or json_response(200, patient())  # noqa: E731
    token = secret("t")
    client = SMARTClient(
        StaticTokenProvider(token, "http://ehr.test/fhir"), transport=httpx.MockTransport(handler)
    )
    with pytest.raises(UnsafeURL, match="over plain HTTP"):
        client.read("Patient", "p1")
    assert sent == []
    allowed = SMARTClient(
        StaticTokenProvider(token, "http://ehr.test/fhir"),
        transport=httpx.MockTransport(handler),
        allow_http=True,
    )
    assert allowed.read("Patient", "p1")["id"] == "p1"
    local = SMARTClient(
        StaticTokenProvider(token, "http://localhost:8700/fhir"),
        transport=httpx.MockTransport(handler),
    )
    assert local.read("Patient", "p1")["id"] == "p1"


def test_refused_requests_are_reported_with_their_status() -> None:
    """ "Was it allowed" is half of an audit trail: a 403 is reported like a 200."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Patient/p2"):
            return json_response(403, outcome("not your patient"))
        return json_response(404, outcome("unknown type", "not-found"))

    client, _, _ = client_for(handler)
    events: list[DataAccessEvent] = []
    client.event_sink = events.append
    with pytest.raises(FHIRError):
        client.read("Patient", "p2")
    with pytest.raises(FHIRError):
        client.search("Observation", code="8867-4").to_pandas()
    assert [(e.action, e.resource_type, e.status, e.count) for e in events] == [
        ("read", "Patient", 403, 0),
        ("search", "Observation", 404, 0),
    ]
    assert events[0].patient == "p2" and events[0].resource_id == "p2"
    assert [name for name, _ in events[1].params] == ["code", "_count"]


def test_requests_that_got_no_answer_or_were_never_sent_are_not_reported() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client, _, _ = client_for(handler)
    events: list[DataAccessEvent] = []
    client.event_sink = events.append
    with pytest.raises(FHIRConnectionError):
        client.read("Patient", "p1")
    page = bundle([patient()], next_url="https://evil.test/fhir/Patient?page=2")
    client, _, _ = client_for(lambda r: json_response(200, page))
    client.event_sink = events.append
    with pytest.raises(UnsafeURL):
        for _ in client.search("Patient"):  # (list() would also ask for the count)
            pass
    assert [(e.status, e.count) for e in events] == [(200, 1)]  # the first page only


def test_len_asks_for_the_count_once_and_a_server_that_cannot_count_is_explained() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("_summary") == "count":
            body = {"resourceType": "Bundle", "type": "searchset", "total": 42}
            return json_response(200, body)
        return json_response(200, bundle([patient()]))

    client, fake, _ = client_for(handler)
    result = client.search("Patient", name="x", _count=10, _sort="name")
    assert len(result) == 42 and len(result) == 42  # cached: one request
    [count] = fake.requests
    assert sorted(count.url.params.multi_items()) == [("_summary", "count"), ("name", "x")]

    client, _, _ = client_for(lambda r: json_response(200, bundle([patient()])))  # no total
    result = client.search("Patient")
    with pytest.raises(TypeError, match=r"len\(\) needs the server's _summary=count"):
        len(result)
    assert len(list(result)) == 1  # list() treats it as "no size hint" and carries on


def test_patient_banner_escapes_what_the_ehr_sends() -> None:
    from jupyterhub_smart.notebook import PatientBanner

    evil = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"use": "official", "family": "<img src=x onerror=alert(1)>", "given": ["A&B"]}],
        "birthDate": "1970-01-01",
        "gender": "other",
    }
    html = PatientBanner.from_resource(evil)._repr_html_()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "A&amp;B" in html
    bare = PatientBanner.from_resource({"resourceType": "Patient"})  # nothing to show: no crash
    assert "(no name)" in bare._repr_html_() and "unknown" in str(bare)
