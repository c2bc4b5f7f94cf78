"""Hub events: every action the hub takes leaves its event, with its reason.

A real sandbox (access tokens living 6 s, so refreshes come due in a test) and a
real JupyterHub running the SMARTAuthenticator. One scenario walks through the
actions in order: an unknown issuer, a callback without state, an EHR launch,
the token API, a refresh, a logout (with revocation), a refresh token the EHR
revoked (sign in again) and an EHR outage (refresh failed). Each step is checked
in the audit log as it happens; at the end the whole trail verifies and holds no
token, code or clinical value.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, patient_ids, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.audit.events import ISSUER_SYSTEM

pytestmark = pytest.mark.slow

LIFETIME = 6  # seconds; the hub refreshes in the last half of a token's life
CLIENT_ID = "hub-events"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, SandboxProcess]]:
    work = tmp_path_factory.mktemp("hub-events")
    port = free_port()
    client = {
        "client_id": CLIENT_ID,
        "type": "public",
        "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
    }
    with (
        run_sandbox(
            work / "sandbox", [client], extra_args=["--access-token-lifetime", str(LIFETIME)]
        ) as sandbox,
        run_hub(work / "hub", {sandbox.iss: {"client_id": CLIENT_ID}}, port=port) as hub,
    ):
        yield hub, sandbox


class Trail:
    """The hub's audit log, read from where the last look ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def new(self) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.path.read_bytes().splitlines()]
        fresh, self.seen = records[self.seen :], len(records)
        return fresh


def action(record: dict[str, Any]) -> str:
    return str(record["subtype"][0]["code"])


def one(records: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [r for r in records if action(r) == name]
    assert len(found) == 1, (name, [action(r) for r in records])
    return found[0]


def details(record: dict[str, Any]) -> dict[str, str]:
    return {
        d["type"]: d["valueString"] for e in record.get("entity", []) for d in e.get("detail", [])
    }


def references(record: dict[str, Any]) -> list[str]:
    return [
        e["what"]["reference"] for e in record.get("entity", []) if "reference" in e.get("what", {})
    ]


def issuers(record: dict[str, Any]) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in record.get("entity", [])
        if e.get("what", {}).get("identifier", {}).get("system") == ISSUER_SYSTEM
    ]


def token_api(hub: Hub, api_token: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url}/hub/api/smart/token",
        headers={"Authorization": f"token {api_token}"},
        timeout=30,
    )


def wait_until_refresh_due(expires_at: float) -> None:
    time.sleep(max(0.0, expires_at - LIFETIME / 2 - time.time()) + 0.5)


def login(hub: Hub, sandbox: SandboxProcess, browser: Browser, patient: str) -> str:
    assert ehr_launch(browser, sandbox, hub, patient).status_code == 302
    with hub.api(hub.admin_token) as api:
        [name] = [u["name"] for u in api.get("/users").json() if "@" in u["name"]]
    return str(name)


def test_every_hub_action_leaves_its_event(env: tuple[Hub, SandboxProcess]) -> None:
    hub, sandbox = env
    trail = Trail(hub.audit_path)
    secrets_seen: list[str] = []

    # An issuer that is not on the allow-list.
    refused = httpx.get(
        f"{hub.url}/hub/oauth_login",
        params={"iss": "https://unknown.example/fhir", "launch": "xyz"},
    )
    assert refused.status_code == 400
    event = one(trail.new(), "issuer-refused")
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith("unknown_issuer")
    # which issuer was refused (attacker-controlled, clipped; not a secret)
    assert issuers(event) == ["https://unknown.example/fhir"]

    # A callback without state: login failed, with the reason.
    code = secrets.token_urlsafe(24)
    secrets_seen.append(code)
    with Browser() as browser:
        answer = browser.get(f"{hub.url}/hub/oauth_callback?code={code}")
    assert answer.status_code == 400
    event = one(trail.new(), "login-failed")
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith("missing_state")

    patients = patient_ids(sandbox)
    with Browser() as browser:
        # The EHR launch: launch received, login succeeded with scopes asked and granted.
        name = login(hub, sandbox, browser, patients[0])
        records = trail.new()
        launch = one(records, "launch-received")
        assert "launch" in details(launch)["scopes-requested"].split()
        success = one(records, "login-succeeded")
        assert success["agent"][0]["altId"] == name
        granted = details(success)["scopes-granted"].split()
        assert details(success)["scopes-requested"] and granted
        assert f"Patient/{patients[0]}" in references(success)
        state = hub.auth_state(name)
        secrets_seen += [state["access_token"], state["refresh_token"], state.get("id_token", "")]
        patient = httpx.get(
            f"{sandbox.iss}/Patient/{patients[0]}",
            headers={"Authorization": f"Bearer {state['access_token']}"},
        ).json()
        clinical = [patient["name"][0]["family"], patient["birthDate"]]

        # The token API hands the access token out: to whom, and a salted hash of it.
        api_token = hub.user_token(name)
        secrets_seen.append(api_token)
        first = token_api(hub, api_token)
        assert first.status_code == 200
        issued = one(trail.new(), "token-issued")
        assert issued["agent"][0]["altId"] == name
        assert hashlib.sha256(first.json()["access_token"].encode()).hexdigest() not in json.dumps(
            issued
        )

        # A refresh, made by the token API when the token comes due.
        wait_until_refresh_due(first.json()["expires_at"])
        second = token_api(hub, api_token)
        assert second.status_code == 200
        secrets_seen.append(second.json()["access_token"])
        records = trail.new()
        assert one(records, "token-refreshed")["outcome"] == "0"
        one(records, "token-issued")

        # Logout: the refresh token is revoked at the EHR, and both are recorded.
        assert browser.logout(hub.url).status_code in (200, 302)
        records = trail.new()
        assert one(records, "logout")["agent"][0]["altId"] == name
        assert one(records, "token-revoked")["agent"][0]["altId"] == name

    with Browser() as browser:
        # The EHR revoked the refresh token: the user must sign in again.
        login(hub, sandbox, browser, patients[1])
        state = hub.auth_state(name)
        secrets_seen += [state["access_token"], state["refresh_token"], state.get("id_token", "")]
        trail.new()
        revoked = httpx.post(
            f"{sandbox.origin}/auth/revoke",
            data={"token": state["refresh_token"], "client_id": CLIENT_ID},
        )
        assert revoked.status_code == 200
        wait_until_refresh_due(state["expires_at"])
        again = token_api(hub, api_token)
        assert again.status_code == 401 and again.json()["error"] == "reauthentication_required"
        # One occurrence, one record: the refresh's, with the EHR's reason (the token
        # API's answer adds none), for this user at this issuer.
        event = one(trail.new(), "reauthentication-required")
        assert event["agent"][0]["altId"] == name and event["outcome"] == "4"
        assert "invalid_grant" in event["outcomeDesc"]
        assert issuers(event) == [sandbox.iss]

    with Browser() as browser:
        # The EHR is down when a refresh comes due: refresh failed, the session is kept.
        login(hub, sandbox, browser, patients[2])
        state = hub.auth_state(name)
        secrets_seen += [state["access_token"], state["refresh_token"], state.get("id_token", "")]
        trail.new()
        sandbox.stop()
        wait_until_refresh_due(state["expires_at"])
        assert token_api(hub, api_token).status_code == 200  # the still-valid token
        event = one(trail.new(), "refresh-failed")
        assert event["agent"][0]["altId"] == name and event["outcomeDesc"]

    # The whole trail verifies, and holds no secret and no clinical value.
    verified = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "audit", "verify", str(hub.audit_path)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    text = hub.audit_path.read_text()
    leaked = [s[:8] for s in secrets_seen if s and s in text]
    assert not leaked
    assert not [value for value in clinical if value in text]
