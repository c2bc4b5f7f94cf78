"""Pipelined paging (the next page in flight while this one is flattened), over real HTTP.

* Results and order: a search's frame, sync and async, with and without the
  page ahead, through the Arrow engine and the dict path, equals the frame of
  the same resources fetched page by page with plain httpx against the real
  sandbox (several pages each).
* The Arrow page reader gives the dict path's rows for a page of each type
  with a built-in view that the sandbox serves.
* Errors on page k (a 403, a 500, a sign-in the hub can no longer refresh)
  surface as they did, with the earlier pages reported in order, and leave no
  pager thread behind; a search abandoned early reports the pages it fetched.
* The ``next`` link is read from the page's bytes before the parse
  (:func:`scan_link`), and a page whose bytes say two things is refused.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
from conftest import SYMMETRIC_CLIENT
from sandbox_process import SandboxProcess

from jupyterhub_smart.notebook import (
    AsyncSMARTClient,
    CallableTokenProvider,
    FHIRError,
    ReauthenticationRequired,
    RetryPolicy,
    SMARTClient,
    StaticTokenProvider,
    connect,
    connect_async,
)
from jupyterhub_smart.notebook.arrowpage import ArrowPages
from jupyterhub_smart.notebook.events import DataAccessEvent
from jupyterhub_smart.notebook.flatten import TableBuilder, resolve_view
from jupyterhub_smart.notebook.pager import scan_link
from jupyterhub_smart.views import builtin, warnings_of

from .fakes import outcome, secret
from .rogue_fhir import Reply, bundle, run_rogue_fhir
from .sandbox_tokens import system_token

PATIENT = "patient-00001"


def _by_hand(
    sandbox: SandboxProcess, token: str, resource_type: str, params: dict[str, str]
) -> tuple[list[dict[str, Any]], int]:
    """The matches of a search, page after page, with plain httpx; and the number of pages."""
    headers = {"Authorization": f"Bearer {token}"}
    url: str | None = f"{sandbox.iss}/{resource_type}"
    query: dict[str, str] | None = params
    found, pages = [], 0
    with httpx.Client(headers=headers) as http:
        while url:
            page = http.get(url, params=query).json()
            pages += 1
            found += [e["resource"] for e in page.get("entry", [])]
            url = next((li["url"] for li in page["link"] if li["relation"] == "next"), None)
            query = None
    return found, pages


def _pager_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fhir-pager"]


@pytest.mark.parametrize(
    ("resource_type", "params", "page_size"),
    [("Observation", {"patient": PATIENT}, 25), ("Patient", {}, 2)],
)
def test_pipelined_frames_equal_a_page_by_page_fetch(
    sandbox: SandboxProcess, resource_type: str, params: dict[str, str], page_size: int
) -> None:
    token = system_token(sandbox)["access_token"]
    resources, pages = _by_hand(sandbox, token, resource_type, {**params, "_count": str(page_size)})
    assert pages > 2
    reference = TableBuilder(resource_type)
    reference.add(resources)
    expected = reference.to_arrow()
    with connect(
        sandbox.iss, token=token, page_size=page_size, check_scopes=False, progress=False
    ) as fhir:
        search = fhir.search(resource_type, **params)
        assert search.to_arrow().equals(expected, check_metadata=True)
        assert search.to_arrow(raw=True).drop_columns(["raw"]).equals(expected)  # dict path
        assert [r["id"] for r in search] == [r["id"] for r in resources]
        search.prefetch = False
        assert search.to_arrow().equals(expected, check_metadata=True)

    async def async_tables() -> list[pa.Table]:
        async with connect_async(
            sandbox.iss, token=token, page_size=page_size, check_scopes=False
        ) as fhir:
            search = await fhir.search(resource_type, **params)
            ahead = await search.to_arrow()
            ids = [r["id"] async for r in search]
            assert ids == [r["id"] for r in resources]
            search.prefetch = False
            return [ahead, await search.to_arrow()]

    for table in asyncio.run(async_tables()):
        assert table.equals(expected, check_metadata=True)
    assert _pager_threads() == []


def test_arrow_page_reader_gives_the_dict_paths_rows_for_each_served_builtin_type(
    sandbox: SandboxProcess,
) -> None:
    from jupyterhub_smart.views.table import TableConverter

    token = system_token(sandbox)["access_token"]
    checked = set()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        for resource_type in builtin.names():
            body = http.get(f"{sandbox.iss}/{resource_type}", params={"_count": "100"}).content
            view = resolve_view(resource_type)
            reader = ArrowPages.for_view(view, resource_type)
            resources = [e["resource"] for e in orjson.loads(body).get("entry", [])]
            if reader is None or not resources:
                continue
            read = reader.read(body)
            assert read is not None, resource_type
            converter = TableConverter(view.columns)
            rows = [row for resource in resources for row in view.rows(resource)]
            expected = converter.batch(rows)
            got = pa.RecordBatch.from_arrays(read.arrays, schema=expected.schema)
            assert got.equals(expected), resource_type
            assert read.resources == read.matches == read.entries == len(resources)
            checked.add(resource_type)
    assert checked >= {"Patient", "Observation", "Condition", "Encounter", "MedicationRequest"}


def _failing_second_page(status: int) -> Any:
    def answer(path: str) -> Reply:
        if "page=2" in path:
            return Reply(status, outcome(f"page two says {status}"))
        return Reply(body=bundle(["a", "b"], next_url=f"{base[0]}/Patient?page=2"))

    base: list[str] = []
    return answer, base


@pytest.mark.parametrize("status", [403, 500])
def test_an_error_on_page_two_surfaces_after_page_one_is_reported(status: int) -> None:
    with run_rogue_fhir() as server:
        answer, base = _failing_second_page(status)
        base.append(server.base)
        server.answer = answer
        events: list[DataAccessEvent] = []
        provider = StaticTokenProvider(secret("static"), server.base)
        with SMARTClient(provider, event_sink=events.append) as client:
            with pytest.raises(FHIRError, match=f"page two says {status}") as raised:
                client.search("Patient").to_pandas()
            assert raised.value.status == status
            assert _pager_threads() == []
            assert [(e.status, e.count) for e in events] == [(200, 2), (status, 0)]

        async def run() -> None:
            async with AsyncSMARTClient(provider, event_sink=events.append) as client:
                with pytest.raises(FHIRError, match=f"page two says {status}"):
                    await (await client.search("Patient")).to_pandas()

        events.clear()
        asyncio.run(run())
        assert [(e.status, e.count) for e in events] == [(200, 2), (status, 0)]


def test_a_sign_in_that_ends_mid_search_surfaces_and_leaves_no_thread(
    sandbox: SandboxProcess,
) -> None:
    minted: list[str] = []

    def mint() -> dict[str, Any]:
        if minted:  # the hub can no longer refresh the session
            raise ReauthenticationRequired("/hub/oauth_login")
        body = system_token(sandbox)
        minted.append(body["access_token"])
        return body

    provider = CallableTokenProvider(mint, sandbox.iss)
    with SMARTClient(provider, page_size=5, progress=False, check_scopes=False) as client:
        search = client.search("Observation", patient=PATIENT)
        with pytest.raises(ReauthenticationRequired):
            for n, _page in enumerate(search.pages()):
                if n == 0:  # the EHR grant ends while page 2 is on its way
                    response = httpx.post(
                        f"{sandbox.origin}/auth/revoke",
                        auth=(SYMMETRIC_CLIENT["client_id"], SYMMETRIC_CLIENT["client_secret"]),
                        data={"token": minted[0]},
                    )
                    assert response.status_code == 200
        assert n >= 1
    assert _pager_threads() == []


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        return super().handle_request(request)


def test_an_abandoned_search_reports_the_pages_it_fetched_ahead(sandbox: SandboxProcess) -> None:
    token = system_token(sandbox)["access_token"]
    events: list[DataAccessEvent] = []
    transport = CountingTransport()
    with connect(
        sandbox.iss, token=token, page_size=5, check_scopes=False, progress=False,
        event_sink=events.append, transport=transport,
    ) as fhir:  # fmt: skip
        for _resource in fhir.search("Observation", patient=PATIENT):
            break
        deadline = time.monotonic() + 30
        while _pager_threads() and time.monotonic() < deadline:
            time.sleep(0.05)  # a page in flight arrives, is reported, and its thread ends
    assert _pager_threads() == []
    assert 2 <= len(transport.requests) <= 3  # the page used, and at most two ahead
    assert [e.url for e in events] == transport.requests
    assert [(e.status, e.count) for e in events] == [(200, 5)] * len(transport.requests)


def test_next_link_is_read_from_the_bytes_before_the_entries() -> None:
    link = [{"relation": "next", "url": "https://ehr.test/fhir/Patient?p=2"}]
    page = {"resourceType": "Bundle", "meta": {"tag": [{"code": 'a}]\\"['}]}, "link": link}
    assert scan_link(orjson.dumps({**page, "entry": [{"resource": {}}]})) == link
    assert scan_link(orjson.dumps({"resourceType": "Bundle", "total": 0})) is None
    spaced = orjson.dumps({**page, "entry": []}, option=orjson.OPT_INDENT_2)
    assert scan_link(spaced) == link
    unknown = [
        orjson.dumps({"resourceType": "Bundle", "entry": [], "link": link}),  # link after entry
        orjson.dumps({"resourceType": "Patient", "link": link}),
        b'{"resource\\u0054ype": "Bundle", "link": []}',
        b'{"resourceType": "Bundle", "link": [], "link": [], "entry": []}',
        b'{"resourceType": "Bundle", "link": [',
        b"[]",
    ]
    for body in unknown:
        assert scan_link(body) is not None and not isinstance(scan_link(body), list), body


def test_a_page_whose_bytes_hold_two_link_members_is_refused() -> None:
    def answer(path: str) -> Reply:
        first = orjson.dumps(
            {"resourceType": "Bundle", "link": [{"relation": "next", "url": f"{base}/P?p=2"}]}
        )
        rest = b',"entry":[{"resource":{"resourceType":"Patient","id":"a"}}],"link":[]}'
        body = first[:-1] + rest
        return Reply(chunks=[body], length=len(body))

    with run_rogue_fhir() as server:
        base = server.base
        server.answer = answer
        with SMARTClient(StaticTokenProvider(secret("static"), server.base)) as client:
            with pytest.raises(FHIRError, match="more than one 'link'"):
                client.search("Patient").to_pandas()
            with pytest.raises(FHIRError, match="more than one 'link'"):
                list(client.search("Patient"))


def _patients(base: str, ids: list[str], next_page: str | None) -> bytes:
    """A page with its ``link`` before ``entry``, as servers write it."""
    link = [{"relation": "next", "url": f"{base}/Patient?{next_page}"}] if next_page else []
    entries = [{"resource": {"resourceType": "Patient", "id": i}} for i in ids]
    body = {"resourceType": "Bundle", "type": "searchset", "link": link, "entry": entries}
    return orjson.dumps(body)


def test_the_next_page_is_asked_for_while_this_one_still_streams_in() -> None:
    """Page 1's link is read from its first bytes: page 2 is asked for before page 1 has arrived.

    The server holds back the rest of page 1 until page 2's request comes (or 10 s pass);
    then pages and events keep their order, sync and async.
    """
    with run_rogue_fhir() as server:
        order: list[str] = []
        asked = threading.Event()

        def answer(path: str) -> Reply:
            if "page=2" in path:
                order.append("page 2 asked")
                asked.set()
                return Reply(body=orjson.loads(_patients(server.base, ["c"], None)))
            body = _patients(server.base, ["a", "b"], "page=2")
            cut = body.index(b'"entry":[') + len(b'"entry":[')

            def chunks() -> Any:
                yield body[:cut]
                asked.wait(10)
                order.append("page 1 ended")
                yield body[cut:]

            return Reply(chunks=chunks(), length=len(body))

        server.answer = answer
        events: list[DataAccessEvent] = []
        provider = StaticTokenProvider(secret("static"), server.base)
        with SMARTClient(provider, event_sink=events.append, progress=False) as client:
            assert list(client.search("Patient").to_pandas()["id"]) == ["a", "b", "c"]
        assert order == ["page 2 asked", "page 1 ended"]

        async def run() -> list[str]:
            async with AsyncSMARTClient(provider, event_sink=events.append) as client:
                return list((await (await client.search("Patient")).to_pandas())["id"])

        order.clear()
        asked.clear()
        assert asyncio.run(run()) == ["a", "b", "c"]
        assert order == ["page 2 asked", "page 1 ended"]
        assert [(e.url.rsplit("/", 1)[1], e.count) for e in events] == [
            ("Patient?_count=1000", 2),
            ("Patient?page=2", 1),
        ] * 2


def test_a_retried_page_whose_link_changed_stops_the_search() -> None:
    """The link read from page 1's first bytes (page 2 already asked for) is not the link of
    the page a retry after a broken connection brings: an error, never the wrong page 2."""
    with run_rogue_fhir() as server:
        attempts: list[str] = []

        def answer(path: str) -> Reply:
            if "page=" in path:
                return Reply(body=orjson.loads(_patients(server.base, ["x"], None)))
            attempts.append(path)
            body = _patients(server.base, ["a", "b"], f"page={len(attempts) + 1}")
            if len(attempts) % 2:  # the first bytes, then the connection breaks

                def broken() -> Any:
                    yield body[: body.index(b'"entry":[') + 9]
                    raise ConnectionAbortedError("the connection breaks mid-page")

                return Reply(chunks=broken(), length=len(body))
            return Reply(body=orjson.loads(body))

        server.answer = answer
        provider = StaticTokenProvider(secret("static"), server.base)
        retry = RetryPolicy(backoff=0.01, max_backoff=0.01)
        with (
            SMARTClient(provider, progress=False, retry=retry) as client,
            pytest.raises(FHIRError, match="not the one read from its first bytes"),
        ):
            client.search("Patient").to_pandas()
        assert len(attempts) == 2

        async def run() -> None:
            async with AsyncSMARTClient(provider, retry=retry) as client:
                await (await client.search("Patient")).to_pandas()

        with pytest.raises(FHIRError, match="not the one read from its first bytes"):
            asyncio.run(run())
        assert len(attempts) == 4


def _observation(oid: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 70, "unit": "/min"},
    }


def test_dates_parsed_page_by_page_equal_the_dict_paths() -> None:
    """Pages read by the Arrow engine have their dates parsed as they come: partial dates,
    offsets and text that is no date give the dict path's values and warning counts."""
    pages = [
        [_observation("a", "2021"), _observation("b", "2021-04-27T10:00:00+02:00")],
        [_observation("c", "yesterday"), _observation("d", "2021-04")],
    ]
    resources = [r for page in pages for r in page]
    with run_rogue_fhir() as server:

        def body(n: int) -> bytes:
            link = (
                [{"relation": "next", "url": f"{server.base}/Observation?page=2"}] if n == 0 else []
            )
            entries = [{"resource": r, "search": {"mode": "match"}} for r in pages[n]]
            return orjson.dumps({"resourceType": "Bundle", "link": link, "entry": entries})

        reader = ArrowPages.for_view(resolve_view("Observation"), "Observation")
        assert reader is not None and all(reader.read(body(n)) is not None for n in (0, 1))
        server.answer = lambda path: Reply(body=orjson.loads(body(1 if "page=2" in path else 0)))
        reference = TableBuilder("Observation")
        reference.add(resources)
        expected = reference.to_arrow()
        assert warnings_of(expected) == {"effective": 1}
        assert expected.column("effective").null_count == 1
        provider = StaticTokenProvider(secret("static"), server.base)
        with SMARTClient(provider, progress=False, check_scopes=False) as client:
            assert client.search("Observation").to_arrow().equals(expected, check_metadata=True)

        async def run() -> pa.Table:
            async with AsyncSMARTClient(provider, check_scopes=False) as client:
                return await (await client.search("Observation")).to_arrow()

        assert asyncio.run(run()).equals(expected, check_metadata=True)
