"""Search results through SQL on FHIR views, against the real sandbox over HTTP.

* the property the views promise: a built-in view over a search's resources
  gives the same rows as the same view over the same resources read from an
  NDJSON file (the sandbox's generator, same seed, written to disk);
* ``to_pandas(view=...)`` with a dict, a file or a built-in name, and bad views
  refused before any request;
* paging with the next page requested while the current one is processed:
  the request for page N+1 has started when page N is handed over, and the
  results and their order are those of fetching one page after the other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
from sandbox_process import SandboxProcess

from jupyterhub_smart import views
from jupyterhub_smart.notebook import connect, connect_async
from jupyterhub_smart.sandbox.fhir.synthetic import generate
from jupyterhub_smart.views import ViewDefinitionError, builtin
from jupyterhub_smart.views.ndjson import NdjsonReader

from .sandbox_tokens import system_token

PATIENT = "patient-00001"


def _sorted(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda row: repr(sorted(row.items())))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session sandbox's resources (5 patients, seed 7) as one NDJSON file."""
    path = tmp_path_factory.mktemp("export") / "all.ndjson"
    with path.open("wb") as out:
        for row in generate(5, 7):
            out.write(row.json + b"\n")
    return path


@pytest.mark.parametrize(
    "resource_type", ["Patient", "Observation", "Condition", "Encounter", "MedicationRequest"]
)
def test_builtin_view_over_search_equals_view_over_ndjson(
    sandbox: SandboxProcess, export: Path, resource_type: str
) -> None:
    view = views.compile_view(builtin.load(resource_type))
    token = system_token(sandbox)["access_token"]
    with connect(
        sandbox.iss, token=token, page_size=50, check_scopes=False, progress=False
    ) as fhir:
        searched = views.run(view, fhir.search(resource_type))
    from_file = views.run(view, NdjsonReader([str(export)]))
    assert searched.num_rows > 0
    assert searched.schema == from_file.schema
    assert _sorted(searched) == _sorted(from_file)


def test_to_pandas_with_a_view_dict_file_or_builtin_name(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    view = {
        "resource": "Observation",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]},
            {"forEach": "component", "column": [{"name": "part", "path": "code.coding.code", "type": "code"},
                                                 {"name": "mmHg", "path": "value.ofType(Quantity).value", "type": "decimal"}]},
        ],
    }  # fmt: skip
    path = tmp_path / "bp.json"
    path.write_bytes(orjson.dumps(view))
    token = system_token(sandbox)["access_token"]
    with connect(
        sandbox.iss, token=token, page_size=100, check_scopes=False, progress=False
    ) as fhir:
        search = fhir.search("Observation", patient=PATIENT, code="85354-9")
        frame = search.to_pandas(view=view)
        assert list(frame.columns) == ["id", "part", "mmHg"]
        assert set(frame["part"]) == {"8480-6", "8462-4"}
        assert str(frame["mmHg"].dtype) == "float64" and frame["mmHg"].notna().all()
        assert search.to_arrow(view=path).equals(search.to_arrow(view=view))
        named = search.to_pandas(view="Observation")
        assert list(named.columns) == list(search.to_pandas().columns)
        assert str(named["effective"].dtype) == "datetime64[us, UTC]"


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        return super().handle_request(request)


def test_bad_views_are_refused_before_any_request(sandbox: SandboxProcess) -> None:
    transport = CountingTransport()
    token = system_token(sandbox)["access_token"]
    with connect(
        sandbox.iss, token=token, check_scopes=False, progress=False, transport=transport
    ) as fhir:
        search = fhir.search("Observation", patient=PATIENT)
        with pytest.raises(ViewDefinitionError, match=r"select\[0\]\.column\[0\]\.path"):
            search.to_pandas(
                view={
                    "resource": "Observation",
                    "select": [{"column": [{"name": "x", "path": "frob()"}]}],
                }
            )
        with pytest.raises(
            ValueError, match="view is of Patient resources but the search is for Observation"
        ):
            search.to_pandas(view="Patient")
        with pytest.raises(ValueError, match="not a built-in view"):
            search.to_pandas(view="no/such/view.json")
        assert transport.requests == []
        assert len(search.to_pandas(view="Observation")) > 0
        assert transport.requests  # the same search with a good view does reach the server


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, recording when each request starts and ends."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.log: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append(f"start {request.url.params.get('_getpagesoffset') or request.url}")
        response = await self.real.handle_async_request(request)
        await response.aread()
        self.log.append("end")
        return response

    async def aclose(self) -> None:
        await self.real.aclose()


def test_async_search_requests_the_next_page_while_this_one_is_used(
    sandbox: SandboxProcess,
) -> None:
    token = system_token(sandbox)["access_token"]

    async def pages(prefetch: bool) -> tuple[list[list[str]], list[int]]:
        transport = RecordingTransport()
        started_when_handed: list[int] = []
        ids: list[list[str]] = []
        async with connect_async(
            sandbox.iss, token=token, page_size=20, check_scopes=False, transport=transport
        ) as fhir:
            result = await fhir.search("Observation", patient=PATIENT)
            result.prefetch = prefetch
            async for bundle in result.pages():
                started_when_handed.append(sum(1 for e in transport.log if e.startswith("start")))
                ids.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        return ids, started_when_handed

    ahead_ids, ahead_started = asyncio.run(pages(prefetch=True))
    plain_ids, plain_started = asyncio.run(pages(prefetch=False))
    assert len(ahead_ids) > 3
    assert ahead_ids == plain_ids  # same resources, same order
    # with prefetch, page N is handed over after the request for page N+1 started
    assert ahead_started[:-1] == [n + 2 for n in range(len(ahead_ids) - 1)]
    assert plain_started == [n + 1 for n in range(len(plain_ids))]


def test_async_frames_equal_sync_frames(sandbox: SandboxProcess) -> None:
    token = system_token(sandbox)["access_token"]
    with connect(
        sandbox.iss, token=token, page_size=30, check_scopes=False, progress=False
    ) as fhir:
        sync_table = fhir.search("Observation", patient=PATIENT).to_arrow()

    async def async_table() -> pa.Table:
        async with connect_async(
            sandbox.iss, token=token, page_size=30, check_scopes=False
        ) as fhir:
            return await (await fhir.search("Observation", patient=PATIENT)).to_arrow()

    assert asyncio.run(async_table()).equals(sync_table)
