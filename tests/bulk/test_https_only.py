"""Credentials go only over https or to loopback: the FHIR base, the token endpoint, every tokened URL.

Plain http to a host other than this machine cannot be served by a real
process in these tests (every test server is on loopback, which stays
allowed: the other bulk tests use it), so these tests answer with an
``httpx.MockTransport`` that records every request and check that a refused
URL received none. The opt-in ``allow_insecure_http`` is checked the same way.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jupyterhub_smart import bulk

TOKEN = "https-only-token-5678"
LOOPBACK = "http://127.0.0.1:9"
REMOTE = "http://ehr.example.org"
SECURE = "https://ehr.example.org"


class StaticBearer(httpx.Auth):
    """A fixed bearer token, as a notebook's own token would be."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {TOKEN}"
        yield request


def ndjson() -> httpx.Response:
    """One Patient as a stream (the client reads file bodies with ``iter_raw``)."""
    return httpx.Response(200, stream=httpx.ByteStream(b'{"resourceType":"Patient","id":"p1"}\n'))


def ehr(base: str, **overrides: Callable[[httpx.Request], httpx.Response]) -> Callable[..., Any]:
    """A Bulk Data server at ``base`` that answers a one-file export; ``overrides`` by path."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path in overrides:
            return overrides[path](request)
        if path == "/fhir/$export":
            return httpx.Response(202, headers={"Content-Location": f"{base}/fhir/status"})
        if path == "/fhir/status" and request.method == "DELETE":
            return httpx.Response(202)
        if path == "/fhir/status":
            manifest = {
                "transactionTime": "2026-01-01T00:00:00Z",
                "request": f"{base}/fhir/$export",
                "requiresAccessToken": True,
                "output": [{"type": "Patient", "url": f"{base}/files/p.ndjson", "count": 1}],
                "error": [],
            }
            return httpx.Response(200, content=orjson.dumps(manifest))
        if path == "/files/p.ndjson":
            return ndjson()
        return httpx.Response(404)

    return handler


def recording(
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[httpx.Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handler(request)

    return httpx.Client(transport=httpx.MockTransport(record)), sent


def export(http: httpx.Client, base: str, tmp_path: Path, **kwargs: Any) -> bulk.ExportResult:
    args: dict[str, Any] = {"auth": StaticBearer(), **kwargs}
    return bulk.export(
        fhir_url=f"{base}/fhir", out=tmp_path / "out", types="Patient",
        lock_dir=tmp_path / "locks", http=http, **args,
    )  # fmt: skip


def test_plain_http_fhir_url_is_refused_before_any_request(tmp_path: Path) -> None:
    http, sent = recording(ehr(REMOTE))
    with pytest.raises(bulk.BulkError, match="allow_insecure_http=True") as caught:
        export(http, REMOTE, tmp_path)
    assert sent == []
    assert "ehr.example.org" in str(caught.value)
    assert "--allow-insecure-http" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_backend_services_refuses_http_fhir_url_before_discovery(
    keys: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    http, sent = recording(ehr(REMOTE))
    with pytest.raises(bulk.BulkError, match="plain http"):
        export(http, REMOTE, tmp_path, auth=None, client_id="c", key=keys[0])
    assert sent == []


def test_plain_http_token_endpoint_gets_no_client_assertion(
    keys: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    config = {
        "token_endpoint": f"{REMOTE}/token",
        "authorization_endpoint": f"{REMOTE}/authorize",
        "code_challenge_methods_supported": ["S256"],
    }
    well_known = {
        "/fhir/.well-known/smart-configuration": lambda r: httpx.Response(200, json=config)
    }
    http, sent = recording(ehr(LOOPBACK, **well_known))
    with pytest.raises(bulk.BulkError, match="token endpoint over plain http"):
        export(http, LOOPBACK, tmp_path, auth=None, client_id="c", key=keys[0])
    assert [r.url.path for r in sent] == ["/fhir/.well-known/smart-configuration"]


def test_plain_http_status_url_gets_no_token(tmp_path: Path) -> None:
    kickoff = {
        "/fhir/$export": lambda r: httpx.Response(
            202, headers={"Content-Location": f"{REMOTE}/fhir/status"}
        )
    }
    http, sent = recording(ehr(SECURE, **kickoff))
    with pytest.raises(bulk.BulkError, match="plain http"):
        export(http, SECURE, tmp_path)
    assert [str(r.url).split("?")[0] for r in sent] == [f"{SECURE}/fhir/$export"]


def test_plain_http_file_url_that_needs_the_token_gets_no_request(tmp_path: Path) -> None:
    def status(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(202)
        manifest = {
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": f"{SECURE}/fhir/$export",
            "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": f"{REMOTE}/files/p.ndjson", "count": 1}],
        }
        return httpx.Response(200, content=orjson.dumps(manifest))

    http, sent = recording(ehr(SECURE, **{"/fhir/status": status}))
    with pytest.raises(bulk.BulkError, match="plain http"):
        export(http, SECURE, tmp_path, trusted_origins=[f"{REMOTE}:80"])
    assert not [r for r in sent if r.url.scheme == "http"]


def test_redirect_from_https_to_http_drops_the_token(tmp_path: Path) -> None:
    downgrade = {
        "/files/p.ndjson": lambda r: (
            httpx.Response(307, headers={"Location": f"{REMOTE}/plain/p.ndjson"})
            if r.url.scheme == "https"
            else httpx.Response(404)
        ),
        "/plain/p.ndjson": lambda r: ndjson(),
    }
    http, sent = recording(ehr(SECURE, **downgrade))
    result = export(http, SECURE, tmp_path)
    assert result.summary["resources"] == {"Patient": 1}
    (plain,) = [r for r in sent if r.url.scheme == "http"]
    assert "authorization" not in plain.headers
    (tokened,) = [r for r in sent if r.url.path == "/files/p.ndjson"]
    assert tokened.headers["authorization"] == f"Bearer {TOKEN}"


def test_allow_insecure_http_opts_in(tmp_path: Path) -> None:
    http, sent = recording(ehr(REMOTE))
    result = export(http, REMOTE, tmp_path, allow_insecure_http=True)
    assert result.summary["resources"] == {"Patient": 1}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in sent)


def test_cli_names_the_opt_in(keys: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "jupyterhub_smart", "bulk", "export",
        "--fhir-url", f"{REMOTE}/fhir", "--client-id", "c", "--key", str(keys[0]),
        "--out", str(tmp_path / "out"), "--lock-dir", str(tmp_path / "locks"),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "--allow-insecure-http" in done.stderr
    assert "plain http" in done.stderr
