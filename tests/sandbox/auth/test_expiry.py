"""Expiry of access tokens, launches, refresh tokens and codes, on sandboxes with short lifetimes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandbox_process import SandboxProcess, run_sandbox

from .flow import REDIRECT_URI, authorize, ehr_launch, exchange, patient_ids, query_of

CLIENTS = [{"client_id": "app-public", "type": "public", "redirect_uris": [REDIRECT_URI]}]


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    workdir: Path = tmp_path_factory.mktemp("sandbox-short")
    args = [
        "--access-token-lifetime",
        "1",
        "--launch-lifetime",
        "1",
        "--refresh-token-lifetime",
        "6",
    ]
    with run_sandbox(workdir, CLIENTS, extra_args=args) as process:
        yield process


@pytest.fixture
def client(short: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=short.origin, follow_redirects=False, timeout=30) as http:
        yield http


def wait_past(deadline: float) -> None:
    while time.time() <= deadline:
        time.sleep(0.2)


def test_expired_access_token_is_refused(client: httpx.Client, short: SandboxProcess) -> None:
    auth = authorize(client, short.iss, "app-public", "launch/patient patient/*.rs offline_access")
    body = exchange(client, auth, "app-public").json()
    assert body["expires_in"] == 1
    issued = time.time()
    wait_past(issued + 2)
    expired = client.get(
        f"/fhir/Patient/{body['patient']}",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert expired.status_code == 401
    info = client.post(
        "/auth/introspect", data={"token": body["access_token"], "client_id": "app-public"}
    )
    assert info.json() == {"active": False}
    # the refresh token outlives it and gets a working access token
    refreshed = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": "app-public",
        },
    )
    assert refreshed.status_code == 200
    fresh = refreshed.json()["access_token"]
    ok = client.get(
        f"/fhir/Patient/{body['patient']}", headers={"Authorization": f"Bearer {fresh}"}
    )
    assert ok.status_code == 200


def test_expired_launch_is_refused(client: httpx.Client, short: SandboxProcess) -> None:
    patient = patient_ids(client)[0]
    created = time.time()
    launch = query_of(ehr_launch(client, REDIRECT_URI, patient).headers["location"])["launch"]
    wait_past(created + 2)
    auth = authorize(client, short.iss, "app-public", "launch patient/*.rs", launch=launch)
    assert auth.result["error"] == "invalid_request"
    assert "expired" in auth.result["error_description"]


def test_expired_refresh_token_is_refused(client: httpx.Client, short: SandboxProcess) -> None:
    auth = authorize(client, short.iss, "app-public", "launch/patient patient/*.rs offline_access")
    body = exchange(client, auth, "app-public").json()
    issued = time.time()
    wait_past(issued + 7)
    refreshed = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": "app-public",
        },
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"
    assert "expired" in refreshed.json()["error_description"]


@pytest.fixture(scope="module")
def short_codes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """Codes live one second here (60 by default); nothing else is shortened."""
    workdir: Path = tmp_path_factory.mktemp("sandbox-short-codes")
    with run_sandbox(workdir, CLIENTS, extra_args=["--code-lifetime", "1"]) as process:
        yield process


def test_expired_code_is_refused(short_codes: SandboxProcess) -> None:
    with httpx.Client(base_url=short_codes.origin, follow_redirects=False, timeout=30) as http:
        auth = authorize(http, short_codes.iss, "app-public", "launch/patient patient/*.rs")
        code = auth.code
        issued = time.time()
        wait_past(issued + 2)
        late = exchange(http, auth, "app-public")
        assert late.status_code == 400
        assert late.json()["error"] == "invalid_grant"
        assert "expired" in late.json()["error_description"]
        assert code not in short_codes.log_text()
