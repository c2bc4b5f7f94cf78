"""The client against servers that misbehave: bad manifests, wrong counts, broken lines, redirects."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jupyterhub_smart import bulk

from .scripted_ehr import Scripted, scripted_server

TOKEN = "scripted-token-1234"
PATIENT = b'{"resourceType":"Patient","id":"p%d"}'


class StaticBearer(httpx.Auth):
    """A fixed bearer token, as a notebook's own token would be."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {TOKEN}"
        yield request


@pytest.fixture
def ehr() -> Iterator[Scripted]:
    with scripted_server() as server:
        server.replies["/fhir/$export"] = (202, {"Content-Location": "{origin}/fhir/status"}, b"")
        server.replies["/fhir/status"] = (202, {"Retry-After": "0"}, b"")
        yield server


def manifest(ehr: Scripted, output: list[dict[str, Any]], **extra: Any) -> None:
    body = {
        "transactionTime": "2026-01-01T00:00:00Z",
        "request": f"{ehr.origin}/fhir/$export",
        "requiresAccessToken": True,
        "output": output,
        "error": [],
        **extra,
    }
    ehr.replies["/fhir/status"] = (200, {"Content-Type": "application/json"}, orjson.dumps(body))


def run(ehr: Scripted, tmp_path: Path, **kwargs: Any) -> bulk.ExportResult:
    return bulk.export(
        fhir_url=f"{ehr.origin}/fhir", out=tmp_path / "out", auth=StaticBearer(),
        types="Patient", lock_dir=tmp_path / "locks", **kwargs,
    )  # fmt: skip


def lines(n: int) -> bytes:
    return b"".join(PATIENT % i + b"\n" for i in range(n))


def test_relative_file_urls_are_refused(ehr: Scripted, tmp_path: Path) -> None:
    manifest(ehr, [{"type": "Patient", "url": "/files/p.ndjson", "count": 1}])
    with pytest.raises(bulk.BulkError, match="not absolute"):
        run(ehr, tmp_path)


def test_foreign_hosts_get_no_request_and_no_token(ehr: Scripted, tmp_path: Path) -> None:
    with scripted_server() as stranger:
        stranger.replies["/p.ndjson"] = (200, {}, lines(1))
        manifest(ehr, [{"type": "Patient", "url": f"{stranger.origin}/p.ndjson", "count": 1}])
        with pytest.raises(bulk.BulkError, match="not on the FHIR server's origin"):
            run(ehr, tmp_path)
        assert stranger.requests == []
        # an origin trusted explicitly (a file store of the EHR) is downloaded from
        ehr_out = run(ehr, tmp_path / "again", trusted_origins=[stranger.origin])
        assert ehr_out.summary["resources"] == {"Patient": 1}


def test_cross_origin_redirect_drops_the_bearer_token(ehr: Scripted, tmp_path: Path) -> None:
    with scripted_server() as store:
        store.replies["/presigned/p.ndjson"] = (200, {}, lines(3))
        ehr.replies["/files/p.ndjson"] = (
            307,
            {"Location": f"{store.origin}/presigned/p.ndjson"},
            b"",
        )
        manifest(ehr, [{"type": "Patient", "url": f"{ehr.origin}/files/p.ndjson", "count": 3}])
        result = run(ehr, tmp_path)
        assert result.summary["resources"] == {"Patient": 3}
        ((_, _, at_ehr),) = [r for r in ehr.requests if r[1] == "/files/p.ndjson"]
        assert at_ehr["authorization"] == f"Bearer {TOKEN}"
        ((_, _, at_store),) = store.requests
        assert "authorization" not in at_store


def test_a_status_url_on_another_origin_gets_no_request_and_no_token(
    ehr: Scripted, tmp_path: Path
) -> None:
    with scripted_server() as stranger:
        stranger.replies["/status"] = (202, {"Retry-After": "0"}, b"")
        ehr.replies["/fhir/$export"] = (202, {"Content-Location": f"{stranger.origin}/status"}, b"")
        with pytest.raises(
            bulk.BulkError, match=r"status URL .* not on the FHIR server's origin"
        ) as e:
            run(ehr, tmp_path)
        assert stranger.requests == []  # no poll, no DELETE: the token never left for it
        assert TOKEN not in str(e.value) and "/status" not in str(e.value)
        with pytest.raises(bulk.BulkError, match="not on the FHIR server's origin"):
            bulk.export(
                fhir_url=f"{ehr.origin}/fhir", out=tmp_path / "out", auth=StaticBearer(),
                cancel=True, lock_dir=tmp_path / "locks",
            )  # fmt: skip
        assert stranger.requests == []
        # trusted explicitly (the EHR's job service), it is polled with the token
        manifest(ehr, [{"type": "Patient", "url": f"{ehr.origin}/files/p.ndjson", "count": 1}])
        stranger.replies["/status"] = ehr.replies["/fhir/status"]
        ehr.replies["/files/p.ndjson"] = (200, {}, lines(1))
        result = run(ehr, tmp_path, resume=True, trusted_origins=[stranger.origin])
        assert result.summary["resources"] == {"Patient": 1}
        assert stranger.requests[0][2]["authorization"] == f"Bearer {TOKEN}"


def test_no_token_when_the_manifest_says_none_is_needed(ehr: Scripted, tmp_path: Path) -> None:
    ehr.replies["/files/p.ndjson"] = (200, {}, lines(2))
    manifest(ehr, [{"type": "Patient", "url": f"{ehr.origin}/files/p.ndjson", "count": 2}])
    body = orjson.loads(ehr.replies["/fhir/status"][2])
    body["requiresAccessToken"] = False
    ehr.replies["/fhir/status"] = (200, {}, orjson.dumps(body))
    run(ehr, tmp_path)
    ((_, _, headers),) = [r for r in ehr.requests if r[1] == "/files/p.ndjson"]
    assert "authorization" not in headers


@pytest.mark.parametrize(("sent", "count"), [(5, 3), (2, 3)])
def test_a_file_longer_or_shorter_than_its_count_is_reported(
    ehr: Scripted, tmp_path: Path, sent: int, count: int
) -> None:
    ehr.replies["/files/p.ndjson"] = (200, {}, lines(sent))
    manifest(ehr, [{"type": "Patient", "url": f"{ehr.origin}/files/p.ndjson", "count": count}])
    result = run(ehr, tmp_path)
    assert result.exit_code == 3
    assert result.summary["resources"] == {"Patient": sent}  # what came is saved
    assert result.summary["problems"] == [
        f"output:Patient:1: {sent} lines, but the manifest's count is {count}"
    ]


def test_invalid_ndjson_lines_are_kept_aside_and_reported(ehr: Scripted, tmp_path: Path) -> None:
    body = (
        lines(2)
        + b"{not json\n"
        + b'{"resourceType":"Observation","id":"o1"}\n'
        + b"[1]\n"
        + lines(1)
    )
    ehr.replies["/files/p.ndjson"] = (200, {}, body)
    manifest(ehr, [{"type": "Patient", "url": f"{ehr.origin}/files/p.ndjson", "count": 6}])
    result = run(ehr, tmp_path)
    assert result.exit_code == 3
    assert result.summary["invalid_lines"] == 3
    assert result.summary["resources"] == {"Patient": 3}
    assert result.table("Patient").num_rows == 3
    (bad,) = (tmp_path / "out" / "errors" / "invalid").iterdir()
    reasons = [orjson.loads(line)["reason"] for line in bad.read_bytes().splitlines()]
    assert reasons == ["not JSON", "not a Patient resource", "not a Patient resource"]
    assert [orjson.loads(line)["line"] for line in bad.read_bytes().splitlines()] == [3, 4, 5]


def test_an_operation_outcome_instead_of_a_manifest_fails_clearly(
    ehr: Scripted, tmp_path: Path
) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": "disk full"}],
    }
    ehr.replies["/fhir/status"] = (200, {}, orjson.dumps(outcome))
    with pytest.raises(bulk.BulkError, match="OperationOutcome instead of a manifest: disk full"):
        run(ehr, tmp_path)


def test_a_manifest_without_its_required_fields_is_refused(ehr: Scripted, tmp_path: Path) -> None:
    ehr.replies["/fhir/status"] = (200, {}, b'{"output": []}')
    with pytest.raises(bulk.BulkError, match="no transactionTime"):
        run(ehr, tmp_path)


def test_a_job_that_never_finishes_ends_with_the_time_budget(ehr: Scripted, tmp_path: Path) -> None:
    ehr.replies["/fhir/status"] = (202, {"Retry-After": "1", "X-Progress": "still going"}, b"")
    with pytest.raises(bulk.BudgetExceeded):
        run(ehr, tmp_path, timeout=2.5)
    assert not [r for r in ehr.requests if r[0] == "DELETE"]  # the job is left alone
    state = orjson.loads((tmp_path / "out" / "export.json").read_bytes())
    assert state["status"] == "kicked-off"
    assert TOKEN not in (tmp_path / "out" / "export.json").read_text()
