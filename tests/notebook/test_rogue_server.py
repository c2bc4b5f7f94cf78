"""The client against a FHIR server over real HTTP that misbehaves (see ``rogue_fhir``)."""

from __future__ import annotations

import warnings

import pytest

from jupyterhub_smart.notebook import (
    AsyncSMARTClient,
    IncompleteSearch,
    IncompleteSearchWarning,
    SMARTClient,
    StaticTokenProvider,
)

from .fakes import secret
from .rogue_fhir import Reply, bundle, run_rogue_fhir


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
