"""The whole trail: EHR launch, token refresh, token API call and a notebook search
against the real sandbox and a real SMART hub each leave one event; the log verifies; a
single-byte edit anywhere makes verify fail at that line's seq."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, patient_ids, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.notebook import connect
from jupyterhub_smart.notebook.reporting import HubAuditReporter

pytestmark = pytest.mark.slow

LIFETIME = 6  # seconds: short enough to cross the hub's refresh leeway in a test


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, SandboxProcess]]:
    work = tmp_path_factory.mktemp("trail")
    port = free_port()
    client = {
        "client_id": "hub-trail",
        "type": "public",
        "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
    }
    with run_sandbox(
        work / "sandbox", [client], extra_args=["--access-token-lifetime", str(LIFETIME)]
    ) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-trail"}}
        with run_hub(work / "hub", issuers, port=port) as hub:
            yield hub, sandbox


def actions(path: Path) -> list[str]:
    return [json.loads(line)["subtype"][0]["code"] for line in path.read_bytes().splitlines()]


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
    )


def test_launch_refresh_token_api_and_search_each_leave_one_event(
    env: tuple[Hub, SandboxProcess], tmp_path: Path
) -> None:
    hub, sandbox = env
    patient = patient_ids(sandbox)[0]
    with Browser() as browser:
        assert ehr_launch(browser, sandbox, hub, patient).status_code == 302
    with hub.api(hub.admin_token) as api:
        [name] = [u["name"] for u in api.get("/users").json() if u["name"] != "test-admin"]
    api_token = hub.user_token(name)
    after_login = Counter(actions(hub.audit_path))
    assert after_login["launch-received"] == 1 and after_login["login-succeeded"] == 1

    token_api = f"{hub.url}/hub/api/smart/token"
    headers = {"Authorization": f"token {api_token}"}
    first = httpx.get(token_api, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    # Wait past the refresh leeway (half the lifetime), then the token API refreshes.
    time.sleep(max(0.0, first.json()["expires_at"] - LIFETIME / 2 - time.time()) + 0.5)
    second = httpx.get(token_api, headers=headers, timeout=30)
    assert second.status_code == 200
    assert second.json()["access_token"] != first.json()["access_token"]
    after_tokens = Counter(actions(hub.audit_path))
    assert after_tokens["token-issued"] - after_login["token-issued"] == 2
    assert after_tokens["token-refreshed"] - after_login["token-refreshed"] == 1

    # A notebook search, reported by the kernel-side reporter with the user's token.
    reporter = HubAuditReporter(f"{hub.url}/hub/api/smart/audit", api_token, flush_interval=0.05)
    fhir = connect(
        token=second.json()["access_token"],
        fhir_base_url=second.json()["fhir_base_url"],
        patient=patient,
        event_sink=reporter,
        show_banner=False,
    )
    try:
        rows = list(fhir.search("Observation", {"patient": patient, "code": "8867-4"}))
        assert reporter.flush(30)
    finally:
        fhir.close()
        reporter.close()
    assert rows
    records = [json.loads(line) for line in hub.audit_path.read_bytes().splitlines()]
    searches = [r for r in records if r["subtype"][0]["code"] == "data-access"]
    assert len(searches) >= 1
    assert searches[-1]["agent"][0]["altId"] == name
    # fhirUser and issuer come from the hub's auth_state, not from the kernel.
    assert searches[-1]["agent"][0]["who"]["reference"]
    issuers = [
        e["what"]["identifier"]["value"]
        for e in searches[-1]["entity"]
        if "identifier" in e.get("what", {})
    ]
    assert issuers == [sandbox.iss]
    text = hub.audit_path.read_text()
    assert "8867-4" not in text  # parameter names only
    for secret in (api_token, first.json()["access_token"], second.json()["access_token"]):
        assert secret not in text

    # The whole trail verifies; then one flipped byte, anywhere, fails at its seq.
    result = verify(hub.audit_path)
    assert result.returncode == 0, result.stdout + result.stderr
    pristine = hub.audit_path.read_bytes()
    copy = tmp_path / "copy.jsonl"
    lines = pristine.splitlines(keepends=True)
    for index in (0, len(lines) // 2, len(lines) - 1):
        line = lines[index]
        for pos in (1, len(line) // 3, len(line) - 2):
            data = list(lines)
            data[index] = line[:pos] + bytes([line[pos] ^ 0x01]) + line[pos + 1 :]
            copy.write_bytes(b"".join(data))
            result = verify(copy)
            assert result.returncode == 1
            assert f"FAILED at seq {index + 1}:" in result.stderr, (index, pos, result.stderr)
