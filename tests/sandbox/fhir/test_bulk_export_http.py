"""The sandbox's Bulk Data ``$export`` server, over HTTP, with plain httpx (no client code of ours)."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sandbox_process import SandboxProcess, run_sandbox

from .tokens import BACKEND, BACKEND_SECRET, CLIENTS, bearer, patient_token

LIMITED_SECRET = "bulk-tests-limited-secret-81f0c2"
LIMITED: dict[str, Any] = {
    "client_id": "bulk-limited",
    "type": "confidential-symmetric",
    "client_secret": LIMITED_SECRET,
    "redirect_uris": ["http://127.0.0.1:9/cb"],
    "scope": "system/Patient.rs system/Observation.rs",
}
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
IDENTITY = {"Accept-Encoding": "identity"}
BULK_ARGS = [
    "--bulk-file-resources",
    "40",
    "--bulk-deleted-observations",
    "3",
    "--bulk-job-seconds",
    "0.3",
]


def _token(http: httpx.Client, client_id: str, secret: str, scope: str) -> dict[str, str]:
    response = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.text
    return bearer(response.json())


@pytest.fixture(scope="module")
def bulk_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with run_sandbox(
        tmp_path_factory.mktemp("bulk"),
        [*CLIENTS, LIMITED],
        patients=6,
        seed=11,
        extra_args=BULK_ARGS,
    ) as process:
        yield process


@pytest.fixture(scope="module")
def bhttp(bulk_sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bulk_sandbox.origin, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def system(bhttp: httpx.Client) -> dict[str, str]:
    return _token(bhttp, str(BACKEND["client_id"]), BACKEND_SECRET, "system/*.rs")


def kickoff(
    http: httpx.Client, headers: dict[str, str], path: str = "/fhir/$export", **params: Any
) -> str:
    response = http.get(path, params=params, headers={**headers, **ASYNC})
    assert response.status_code == 202, response.text
    return response.headers["content-location"]


def wait(http: httpx.Client, headers: dict[str, str], status_url: str) -> dict[str, Any]:
    """Poll until the manifest, checking every in-progress answer."""
    for _ in range(200):
        response = http.get(status_url, headers={**headers, "Accept": "application/json"})
        if response.status_code == 200:
            assert parsedate_to_datetime(response.headers["expires"])
            manifest: dict[str, Any] = response.json()
            return manifest
        assert response.status_code == 202, response.text
        assert 0 < len(response.headers["x-progress"]) < 100
        time.sleep(float(response.headers["retry-after"]))
    raise AssertionError("the export never completed")


def lines(http: httpx.Client, headers: dict[str, str], url: str) -> list[dict[str, Any]]:
    response = http.get(url, headers={**headers, **IDENTITY})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+ndjson")
    return [orjson.loads(line) for line in response.content.splitlines()]


def run_export(
    http: httpx.Client, headers: dict[str, str], path: str = "/fhir/$export", **params: Any
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Kick off, wait, download every output by type, then DELETE the job."""
    status_url = kickoff(http, headers, path, **params)
    manifest = wait(http, headers, status_url)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest["output"]:
        got = lines(http, headers, entry["url"])
        assert len(got) == entry["count"]
        assert {r["resourceType"] for r in got} == {entry["type"]}
        by_type.setdefault(entry["type"], []).extend(got)
    manifest["_deleted"] = [
        r for e in manifest.get("deleted", []) for r in lines(http, headers, e["url"])
    ]
    manifest["_errors"] = [
        r for e in manifest.get("error", []) for r in lines(http, headers, e["url"])
    ]
    assert http.delete(status_url, headers=headers).status_code == 202
    return manifest, by_type


def search_total(http: httpx.Client, headers: dict[str, str], resource_type: str) -> int:
    response = http.get(f"/fhir/{resource_type}", params={"_summary": "count"}, headers=headers)
    return int(response.json()["total"])


def test_capability_statement_advertises_export(bhttp: httpx.Client) -> None:
    body = bhttp.get("/fhir/metadata").json()
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in body["instantiates"]
    definitions = {op["definition"].rsplit("/", 1)[1] for op in body["rest"][0]["operation"]}
    assert definitions == {"export", "patient-export", "group-export"}


def test_system_export_matches_search_and_deletes_cleanly(
    bhttp: httpx.Client, system: dict[str, str]
) -> None:
    status_url = kickoff(bhttp, system, _type="Patient,Observation,Condition")
    # one running export per client
    second = bhttp.get("/fhir/$export", headers={**system, **ASYNC})
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    manifest = wait(bhttp, system, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith("/fhir/$export?_type=Patient,Observation,Condition")
    assert manifest["transactionTime"].endswith("Z")
    counts: dict[str, int] = {}
    for entry in manifest["output"]:
        got = lines(bhttp, system, entry["url"])
        assert len(got) == entry["count"] <= 40
        counts[entry["type"]] = counts.get(entry["type"], 0) + len(got)
    assert counts["Patient"] == search_total(bhttp, system, "Patient") == 6
    assert counts["Condition"] == search_total(bhttp, system, "Condition")
    # three Observations count as deleted: left out of every export
    assert counts["Observation"] == search_total(bhttp, system, "Observation") - 3
    assert sum(1 for e in manifest["output"] if e["type"] == "Observation") > 1
    url = manifest["output"][0]["url"]
    assert bhttp.delete(status_url, headers=system).status_code == 202
    gone = bhttp.get(status_url, headers=system)
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert bhttp.get(url, headers=system).status_code == 404


def test_an_export_counts_against_its_client_until_a_poll_reports_it_complete(
    bhttp: httpx.Client, system: dict[str, str]
) -> None:
    status_url = kickoff(bhttp, system, _type="Patient")
    # However long the files take to write, no poll has said "complete" yet.
    time.sleep(0.5)
    refused = bhttp.get("/fhir/$export", params={"_type": "Patient"}, headers={**system, **ASYNC})
    assert refused.status_code == 429
    assert refused.json()["resourceType"] == "OperationOutcome"
    wait(bhttp, system, status_url)
    # Reported complete: the client may start the next export without a DELETE.
    next_url = kickoff(bhttp, system, _type="Patient")
    wait(bhttp, system, next_url)
    for url in (status_url, next_url):
        assert bhttp.delete(url, headers=system).status_code == 202


def test_a_finished_export_nobody_polls_stops_blocking_its_client(
    bhttp: httpx.Client, system: dict[str, str]
) -> None:
    """A client that crashed right after its kick-off is not locked out for good."""
    orphan = kickoff(bhttp, system, _type="Patient")
    refused = bhttp.get("/fhir/$export", params={"_type": "Patient"}, headers={**system, **ASYNC})
    assert refused.status_code == 429
    deadline = time.monotonic() + 30
    while True:
        again = bhttp.get("/fhir/$export", params={"_type": "Patient"}, headers={**system, **ASYNC})
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert again.status_code == 202, again.text
    new_url = again.headers["content-location"]
    wait(bhttp, system, new_url)
    for url in (orphan, new_url):
        assert bhttp.delete(url, headers=system).status_code == 202


def test_files_need_the_jobs_own_client_token(bhttp: httpx.Client, system: dict[str, str]) -> None:
    status_url = kickoff(bhttp, system, _type="Patient")
    manifest = wait(bhttp, system, status_url)
    url = manifest["output"][0]["url"]
    assert bhttp.get(url).status_code == 401
    other = _token(bhttp, str(LIMITED["client_id"]), LIMITED_SECRET, "system/Patient.rs")
    assert bhttp.get(url, headers=other).status_code == 404
    assert bhttp.get(status_url, headers=other).status_code == 404
    assert bhttp.get(url + "x", headers=system).status_code == 404  # a forged signature
    assert bhttp.delete(status_url, headers=system).status_code == 202


def test_types_outside_the_scopes_become_error_entries(bhttp: httpx.Client) -> None:
    limited = _token(
        bhttp, str(LIMITED["client_id"]), LIMITED_SECRET, "system/Patient.rs system/Observation.rs"
    )
    manifest, by_type = run_export(bhttp, limited, _type="Patient,Condition")
    assert set(by_type) == {"Patient"}
    (outcome,) = manifest["_errors"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"
    assert "Condition" in outcome["issue"][0]["diagnostics"]
    refused = bhttp.get(
        "/fhir/$export", params={"_type": "Condition"}, headers={**limited, **ASYNC}
    )
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"


def test_patient_token_exports_its_own_compartment_only(
    bhttp: httpx.Client, bulk_sandbox: SandboxProcess
) -> None:
    token = patient_token(
        bhttp, bulk_sandbox.iss, "launch/patient patient/*.rs", patient="patient-00002"
    )
    _, by_type = run_export(bhttp, bearer(token), "/fhir/Patient/$export")
    assert [p["id"] for p in by_type["Patient"]] == ["patient-00002"]
    for resource_type, resources in by_type.items():
        if resource_type != "Patient":
            assert {r["subject"]["reference"] for r in resources} == {"Patient/patient-00002"}
    assert "Observation" in by_type


def test_group_export_is_limited_to_members(bhttp: httpx.Client, system: dict[str, str]) -> None:
    groups = bhttp.get("/fhir/Group", headers=system).json()
    assert {e["resource"]["id"] for e in groups["entry"]} >= {"all-patients", "hypertension"}
    group = bhttp.get("/fhir/Group/hypertension", headers=system).json()
    members = {m["entity"]["reference"] for m in group["member"]}
    assert group["quantity"] == len(members) > 0
    _, by_type = run_export(
        bhttp, system, "/fhir/Group/hypertension/$export", _type="Patient,Condition"
    )
    assert {f"Patient/{p['id']}" for p in by_type["Patient"]} == members
    assert {c["subject"]["reference"] for c in by_type["Condition"]} <= members
    unknown = bhttp.get("/fhir/Group/nope/$export", headers={**system, **ASYNC})
    assert unknown.status_code == 404


def test_since_lists_deleted_resources(bhttp: httpx.Client, system: dict[str, str]) -> None:
    _, everything = run_export(bhttp, system, _type="Observation")
    manifest, by_type = run_export(
        bhttp, system, _type="Observation", _since="2025-07-01T12:00:00Z"
    )
    assert by_type == {}  # nothing was updated after the synthetic data's lastUpdated
    (bundle,) = manifest["_deleted"]
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    deleted = {e["request"]["url"] for e in bundle["entry"]}
    assert {e["request"]["method"] for e in bundle["entry"]} == {"DELETE"}
    assert len(deleted) == 3
    assert not deleted & {f"Observation/{o['id']}" for o in everything["Observation"]}
    later, _ = run_export(bhttp, system, _type="Observation", _since="2025-08-01T00:00:00Z")
    assert later["_deleted"] == []


def test_type_filter_and_elements(bhttp: httpx.Client, system: dict[str, str]) -> None:
    _, labs = run_export(
        bhttp, system, _type="Observation", _typeFilter="Observation%3Fcategory%3Dlaboratory"
    )
    categories = {o["category"][0]["coding"][0]["code"] for o in labs["Observation"]}
    assert categories == {"laboratory"}
    _, subset = run_export(bhttp, system, _type="Patient", _elements="Patient.gender,birthDate")
    for patient in subset["Patient"]:
        assert set(patient) <= {"resourceType", "id", "meta", "gender", "birthDate"}
        assert "gender" in patient
        assert any(t["code"] == "SUBSETTED" for t in patient["meta"]["tag"])


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_output_format_full_mime_type_and_abbreviations(
    bhttp: httpx.Client, system: dict[str, str], fmt: str
) -> None:
    _, by_type = run_export(bhttp, system, _type="Patient", _outputFormat=fmt)
    assert len(by_type["Patient"]) == 6


def test_post_kickoff_with_parameters_and_patient(
    bhttp: httpx.Client, system: dict[str, str]
) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient,Encounter"},
            {"name": "patient", "valueReference": {"reference": "Patient/patient-00003"}},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        ],
    }
    response = bhttp.post("/fhir/Patient/$export", json=body, headers={**system, **ASYNC})
    assert response.status_code == 202, response.text
    status_url = response.headers["content-location"]
    manifest = wait(bhttp, system, status_url)
    resources = [r for e in manifest["output"] for r in lines(bhttp, system, e["url"])]
    assert bhttp.delete(status_url, headers=system).status_code == 202
    assert {r.get("subject", {}).get("reference", f"Patient/{r['id']}") for r in resources} == {
        "Patient/patient-00003"
    }
    via_get = bhttp.get(
        "/fhir/Patient/$export",
        params={"patient": "Patient/patient-00003"},
        headers={**system, **ASYNC},
    )
    assert via_get.status_code == 400


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({}, {"Prefer": ""}, 400),
        ({"_bogus": "1"}, {}, 400),
        ({"organizeOutputBy": "Patient"}, {}, 400),
        ({"includeAssociatedData": "LatestProvenanceResources"}, {}, 400),
        ({"_since": "2025-01-01"}, {}, 400),
        ({"_outputFormat": "application/json"}, {}, 400),
        ({"_type": "Bogus"}, {}, 400),
        ({"_type": "Practitioner"}, {"path": "/fhir/Patient/$export"}, 400),
        ({"_typeFilter": "Observation%3F_sort%3Ddate"}, {}, 400),
        ({"_elements": "name.given"}, {}, 400),
        ({"allowPartialManifests": "yes"}, {}, 400),
        ({}, {"Authorization": ""}, 401),
        ({}, {"Accept": "text/html"}, 406),
    ],
)
def test_kickoff_refuses_bad_input_with_an_outcome(
    bhttp: httpx.Client,
    system: dict[str, str],
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    headers = dict(headers)
    path = headers.pop("path", "/fhir/$export")
    response = bhttp.get(path, params=params, headers={**system, **ASYNC, **headers})
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_lenient_handling_ignores_unsupported_parameters(
    bhttp: httpx.Client, system: dict[str, str]
) -> None:
    response = bhttp.get(
        "/fhir/$export",
        params={"_type": "Patient", "organizeOutputBy": "Patient", "_bogus": "x"},
        headers={**system, **ASYNC, "Prefer": "respond-async, handling=lenient"},
    )
    assert response.status_code == 202, response.text
    assert "organizeOutputBy" in response.json()["issue"][0]["diagnostics"]
    wait(bhttp, system, response.headers["content-location"])
    assert bhttp.delete(response.headers["content-location"], headers=system).status_code == 202


def test_range_requests_and_gzip(bhttp: httpx.Client, system: dict[str, str]) -> None:
    status_url = kickoff(bhttp, system, _type="Observation")
    manifest = wait(bhttp, system, status_url)
    url = manifest["output"][0]["url"]
    whole = bhttp.get(url, headers={**system, **IDENTITY})
    assert whole.headers["accept-ranges"] == "bytes"
    tail = bhttp.get(url, headers={**system, **IDENTITY, "Range": "bytes=100-"})
    assert tail.status_code == 206
    assert (
        tail.headers["content-range"] == f"bytes 100-{len(whole.content) - 1}/{len(whole.content)}"
    )
    assert tail.content == whole.content[100:]
    bad = bhttp.get(
        url, headers={**system, **IDENTITY, "Range": f"bytes={len(whole.content) + 5}-"}
    )
    assert bad.status_code == 416
    with bhttp.stream("GET", url, headers={**system, "Accept-Encoding": "gzip"}) as packed:
        assert packed.headers["content-encoding"] == "gzip"
        raw = b"".join(packed.iter_raw())
    assert gzip.decompress(raw) == whole.content
    assert len(raw) < len(whole.content)
    assert bhttp.delete(status_url, headers=system).status_code == 202


def test_partial_manifests_page_with_next_links(
    bhttp: httpx.Client, system: dict[str, str]
) -> None:
    whole, _ = run_export(bhttp, system, _type="Observation")
    status_url = kickoff(bhttp, system, _type="Observation", allowPartialManifests="true")
    page = wait(bhttp, system, status_url)
    pages = [page]
    while page.get("link"):
        (link,) = page["link"]
        assert link["relation"] == "next"
        page = bhttp.get(link["url"], headers=system).json()
        pages.append(page)
    assert len(pages) > 1
    assert [e["count"] for p in pages for e in p["output"]] == [e["count"] for e in whole["output"]]
    assert bhttp.delete(status_url, headers=system).status_code == 202


def _fault_sandbox(tmp_path: Path, faults: str) -> Any:
    return run_sandbox(
        tmp_path, CLIENTS, patients=3, seed=11, extra_args=[*BULK_ARGS, "--bulk-faults", faults]
    )


def test_injected_faults_each_fire_then_the_export_works(tmp_path: Path) -> None:
    faults = "kickoff-429,status-429,status-500,status-transient,retry-after-date,file-503,truncate,expire,slow"
    with (
        _fault_sandbox(tmp_path, faults) as sbx,
        httpx.Client(base_url=sbx.origin, timeout=60) as http,
    ):
        system = _token(http, str(BACKEND["client_id"]), BACKEND_SECRET, "system/*.rs")
        first = http.get("/fhir/$export", params={"_type": "Patient"}, headers={**system, **ASYNC})
        assert first.status_code == 429
        assert first.headers["retry-after"] == "1"
        status_url = kickoff(http, system, _type="Patient")
        seen = [http.get(status_url, headers=system) for _ in range(3)]
        assert [r.status_code for r in seen] == [429, 500, 500]
        assert seen[2].json()["issue"][0]["code"] == "transient"
        in_progress = http.get(status_url, headers=system)
        assert in_progress.status_code == 202
        assert parsedate_to_datetime(in_progress.headers["retry-after"])  # an HTTP-date
        time.sleep(0.4)
        expired = http.get(status_url, headers=system).json()
        assert (
            http.get(expired["output"][0]["url"], headers={**system, **IDENTITY}).status_code == 410
        )
        manifest = http.get(status_url, headers=system).json()
        url = manifest["output"][0]["url"]
        assert http.get(url, headers={**system, **IDENTITY}).status_code == 503
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(url, headers={**system, **IDENTITY})
        slow = http.get(url, headers={**system, **IDENTITY})
        assert slow.status_code == 200
        assert len(slow.content.splitlines()) == manifest["output"][0]["count"] == 3


def test_forever_outcome_manifest_no_range_and_comma_only(tmp_path: Path) -> None:
    faults = "forever:3,outcome-manifest,no-range,reject-repeated"
    with (
        _fault_sandbox(tmp_path, faults) as sbx,
        httpx.Client(base_url=sbx.origin, timeout=60) as http,
    ):
        system = _token(http, str(BACKEND["client_id"]), BACKEND_SECRET, "system/*.rs")
        repeated = http.get(
            "/fhir/$export",
            params=[("_type", "Patient"), ("_type", "Condition")],
            headers={**system, **ASYNC},
        )
        assert repeated.status_code == 400
        status_url = kickoff(http, system, _type="Patient,Condition")
        time.sleep(0.4)
        assert [http.get(status_url, headers=system).status_code for _ in range(3)] == [202] * 3
        outcome = http.get(status_url, headers=system)
        assert outcome.status_code == 200
        assert outcome.json()["resourceType"] == "OperationOutcome"
        manifest = http.get(status_url, headers=system).json()
        ranged = http.get(
            manifest["output"][0]["url"], headers={**system, **IDENTITY, "Range": "bytes=5-"}
        )
        assert ranged.status_code == 200
        assert "content-range" not in ranged.headers
