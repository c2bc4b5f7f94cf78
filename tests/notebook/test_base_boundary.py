"""The token stays under its FHIR base, whatever spelling a path uses to climb out."""

from __future__ import annotations

import pytest

from jupyterhub_smart.notebook import SMARTClient, StaticTokenProvider, UnsafeURL
from jupyterhub_smart.notebook.http import check_on_base

from .fakes import secret
from .rogue_fhir import Reply, bundle, run_rogue_fhir

BASE = "https://ehr.test/fhir"


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/..;/admin/Patient",
        "/fhir/..;jsessionid=x/admin",
        "/fhir/Patient/..;/..;/admin",
        "/fhir/.;/..;x=1/admin",
        "/fhir/%2e%2e;/admin",
        "/fhir/%2E%2E%3B/admin",
        "/fhir/%252e%252e/admin",
        "/fhir/Patient%2f..%2fadmin",
        "/fhir/Patient%2Fp1",
        "/fhir/Patient%5cp1",
        "/fhir/Patient\\..\\admin",
        "/fhir/..%00/admin",
        "/fhir/Patient/%2e",
    ],
)
def test_dot_segments_in_every_spelling_are_refused(path: str) -> None:
    with pytest.raises(UnsafeURL, match="outside the FHIR base"):
        check_on_base("https://ehr.test" + path, BASE)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir",
        "/fhir/Patient",
        "/fhir/Patient/a.b-1",
        "/fhir/Patient/...",
        "/fhir/Observation?code=http://loinc.org|8867-4&_getpages=..;x",
        "/fhir/Patient?name=%2e%2e%2f",
    ],
)
def test_ordinary_paths_on_the_base_pass(path: str) -> None:
    url = "https://ehr.test" + path
    assert check_on_base(url, BASE) == url


def test_next_link_with_a_path_parameter_dot_segment_is_not_followed_over_http() -> None:
    with run_rogue_fhir() as server:
        link = f"{server.base}/..;/admin/Patient?page=2"
        server.answer = lambda path: Reply(body=bundle(["a"], next_url=link))
        client = SMARTClient(StaticTokenProvider(secret("static"), server.base))
        with pytest.raises(UnsafeURL, match="outside the FHIR base"):
            client.search("Patient").to_pandas()
        client.close()
    assert len(server.paths) == 1 and server.paths[0].startswith("/fhir/Patient?")
