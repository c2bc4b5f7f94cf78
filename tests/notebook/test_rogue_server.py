"""The client against a FHIR server over real HTTP that misbehaves (see ``rogue_fhir``)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import warnings

import pytest
from peak_memory import PEAK_KB

from jupyterhub_smart.notebook import (
    AsyncSMARTClient,
    FHIRError,
    IncompleteSearch,
    IncompleteSearchWarning,
    SMARTClient,
    StaticTokenProvider,
)

from .fakes import secret
from .rogue_fhir import Reply, bundle, filler, run_rogue_fhir


def _short_pages(path: str) -> Reply:
    """Bundle.total 167, one page of 50 and no next link."""
    return Reply(body=bundle([f"p{i}" for i in range(50)], total=167))


def test_pages_ending_before_bundle_total_warn_with_both_numbers() -> None:
    with run_rogue_fhir() as server:
        server.answer = _short_pages
        with SMARTClient(StaticTokenProvider(secret("static"), server.base)) as client:
            with pytest.warns(IncompleteSearchWarning, match=r"167 matches.*after 50") as caught:
                frame = client.search("Patient").to_pandas()
            assert len(frame) == 50
            assert caught[0].filename == __file__  # shown at the researcher's line
            with pytest.warns(IncompleteSearchWarning, match="167"):
                assert len(list(client.search("Patient"))) == 50


def test_pages_ending_before_bundle_total_raise_when_strict() -> None:
    with run_rogue_fhir() as server:
        server.answer = _short_pages
        with SMARTClient(StaticTokenProvider(secret("static"), server.base)) as client:
            with pytest.raises(IncompleteSearch, match=r"167 matches.*after 50"):
                client.search("Patient").to_pandas(strict=True)
            with pytest.raises(IncompleteSearch):
                client.search("Patient").to_arrow(strict=True)


async def test_async_search_short_of_bundle_total_warns_or_raises() -> None:
    with run_rogue_fhir() as server:
        server.answer = _short_pages
        provider = StaticTokenProvider(secret("static"), server.base)
        async with AsyncSMARTClient(provider) as client:
            with pytest.warns(IncompleteSearchWarning, match=r"167 matches.*after 50"):
                assert len(await (await client.search("Patient")).to_pandas()) == 50
            with pytest.raises(IncompleteSearch, match="167"):
                await (await client.search("Patient")).to_pandas(strict=True)


def test_complete_search_is_silent() -> None:
    with run_rogue_fhir() as server:
        base = server.base

        def answer(path: str) -> Reply:
            if "page=2" in path:
                return Reply(body=bundle(["c"], total=3))
            return Reply(body=bundle(["a", "b"], total=3, next_url=f"{base}/Patient?page=2"))

        server.answer = answer
        client = SMARTClient(StaticTokenProvider(secret("static"), base))
        with client, warnings.catch_warnings():
            warnings.simplefilter("error")
            frame = client.search("Patient").to_pandas(strict=True)
    assert frame["id"].tolist() == ["a", "b", "c"]


MB = 1024 * 1024


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_huge_page_is_refused_at_the_cap_naming_it(declared: bool) -> None:
    size = 200 * MB
    with run_rogue_fhir() as server:
        server.answer = lambda path: Reply(chunks=filler(size), length=size if declared else None)
        provider = StaticTokenProvider(secret("static"), server.base)
        with SMARTClient(provider, max_response_bytes=MB) as client:
            with pytest.raises(FHIRError, match=r"max_response_bytes=1,048,576") as info:
                client.search("Patient").to_pandas()
            assert "connect(max_response_bytes=...)" in str(info.value)
            assert ("Content-Length 209,715,200" in str(info.value)) is declared
        # the client hung up instead of reading on (socket buffers hold a few MB at most)
        assert server.sent < 64 * MB


def test_compressed_page_is_capped_after_decompression() -> None:
    bomb = gzip.compress(b" " * (40 * MB), compresslevel=1)
    with run_rogue_fhir() as server:
        server.answer = lambda path: Reply(
            chunks=[bomb], length=len(bomb), headers={"Content-Encoding": "gzip"}
        )
        provider = StaticTokenProvider(secret("static"), server.base)
        client = SMARTClient(provider, max_response_bytes=MB)
        with client, pytest.raises(FHIRError, match="larger than max_response_bytes"):
            client.read("Patient", "p1")


def test_huge_page_keeps_memory_bounded_with_the_default_cap() -> None:
    """A 200 MB page in a fresh interpreter: refused at the default cap, peak memory bounded."""
    script = (
        f"import sys\n{PEAK_KB}"
        "from jupyterhub_smart.notebook import FHIRError, SMARTClient, StaticTokenProvider\n"
        "client = SMARTClient(StaticTokenProvider('t', sys.argv[1]))\n"
        "try:\n"
        "    client.search('Patient').to_pandas()\n"
        "except FHIRError as exc:\n"
        "    print('refused:', exc)\n"
        "print('peak_kb', peak_kb())\n"
    )
    with run_rogue_fhir() as server:
        server.answer = lambda path: Reply(chunks=filler(200 * MB))
        done = subprocess.run(
            [sys.executable, "-c", script, server.base],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    assert "refused:" in done.stdout and "max_response_bytes=67,108,864" in done.stdout
    peak_mb = int(done.stdout.split("peak_kb")[1]) / 1024
    assert peak_mb < 200, f"peak memory {peak_mb:.0f} MB reading a 200 MB page"


def test_endless_new_next_links_stop_at_max_pages() -> None:
    with run_rogue_fhir() as server:
        base = server.base

        def answer(path: str) -> Reply:
            page = int(path.rsplit("page=", 1)[1]) if "page=" in path else 1
            return Reply(body=bundle([f"p{page}"], next_url=f"{base}/Patient?page={page + 1}"))

        server.answer = answer
        with SMARTClient(StaticTokenProvider(secret("static"), base), max_pages=5) as client:
            with pytest.raises(FHIRError, match=r"max_pages=5 pages.*connect\(max_pages=\.\.\.\)"):
                client.search("Patient").to_pandas()
            assert len(server.paths) == 5
            with pytest.raises(FHIRError, match="max_pages=5"):
                list(client.search("Patient"))
        assert SMARTClient(StaticTokenProvider("t", base)).max_pages == 10_000


async def test_async_search_stops_at_max_pages_and_caps_responses() -> None:
    with run_rogue_fhir() as server:
        base = server.base

        def answer(path: str) -> Reply:
            if "huge" in path:
                return Reply(chunks=filler(200 * MB))
            page = int(path.rsplit("page=", 1)[1]) if "page=" in path else 1
            return Reply(body=bundle([f"p{page}"], next_url=f"{base}/Patient?page={page + 1}"))

        server.answer = answer
        provider = StaticTokenProvider(secret("static"), base)
        async with AsyncSMARTClient(provider, max_pages=3, max_response_bytes=MB) as client:
            with pytest.raises(FHIRError, match="max_pages=3"):
                await (await client.search("Patient")).to_pandas()
            with pytest.raises(FHIRError, match="max_response_bytes=1,048,576"):
                await client.read("Patient", "huge")


def test_repeated_next_link_is_a_loop_over_http() -> None:
    with run_rogue_fhir() as server:
        link = f"{server.base}/Patient?page=2"
        server.answer = lambda path: Reply(body=bundle(["a"], next_url=link))
        client = SMARTClient(StaticTokenProvider(secret("static"), server.base))
        with client, pytest.raises(FHIRError, match="paging loops"):
            client.search("Patient").to_pandas()
        assert len(server.paths) == 2


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_caps_must_be_positive_whole_numbers(bad: object) -> None:
    provider = StaticTokenProvider("t", "http://127.0.0.1:1/fhir")
    with pytest.raises(ValueError, match="max_response_bytes must be"):
        SMARTClient(provider, max_response_bytes=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pages must be"):
        SMARTClient(provider, max_pages=bad)  # type: ignore[arg-type]
