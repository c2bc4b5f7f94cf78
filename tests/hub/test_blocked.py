"""Blocked, no longer allowed and deleted users lose EHR access for real: a real hub, restarted.

Three practitioners sign in and get EHR tokens. The admin then blocks one
(``blocked_users``), narrows the allow rules so that another is left out, and
restarts the hub. Without anyone calling, the hub revokes both users' grants at
the EHR (the sandbox's introspection says so), drops their tokens and records
``access-withdrawn`` once each; their API tokens get 403 at the token API and
the audit endpoint. The third user keeps working until the admin deletes them
through the REST API, which revokes their grant too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, patient_ids, practitioner_ids, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from .conftest import sandbox_client

REPORT = {
    "events": [
        {"interaction": "read", "resource_type": "Patient", "status": 200, "patient": "Patient/p"}
    ]
}


def _active(sandbox: SandboxProcess, token: str) -> bool:
    """The EHR's own view of a token (RFC 7662 introspection by the hub's client)."""
    answer = httpx.post(
        f"{sandbox.origin}/auth/introspect",
        data={"token": token, "client_id": "hub-blocked"},
        timeout=30,
    )
    answer.raise_for_status()
    return bool(answer.json()["active"])


def _withdrawals(hub: Hub) -> dict[str, list[str]]:
    """``access-withdrawn`` descriptions per username."""
    found: dict[str, list[str]] = {}
    for line in hub.audit_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("subtype", [{}])[0].get("code") == "access-withdrawn":
            name = next(a["altId"] for a in event["agent"] if "altId" in a)
            found.setdefault(name, []).append(str(event.get("outcomeDesc")))
    return found


def _users(hub: Hub) -> set[str]:
    with hub.api(hub.admin_token) as api:
        return {u["name"] for u in api.get("/users").json()}


def _calls(hub: Hub, token: str) -> tuple[httpx.Response, httpx.Response]:
    """The token API and the audit endpoint, with one user's API token."""
    with hub.api(token) as client:
        return client.get("/smart/token"), client.post("/smart/audit", json=REPORT)


@pytest.mark.slow
def test_blocked_and_removed_users_lose_ehr_access_at_the_ehr_too(tmp_path: Path) -> None:
    port = free_port()
    client = sandbox_client("hub-blocked", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(tmp_path / "ehr", [client]) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-blocked"}}
        people = practitioner_ids(sandbox)[:3]
        assert len(people) == 3, people
        names, tokens, refresh = [], [], []
        with run_hub(tmp_path / "hub", issuers, port=port) as hub:
            for practitioner in people:
                with Browser() as browser:
                    answer = ehr_launch(
                        browser, sandbox, hub, patient_ids(sandbox)[0], practitioner
                    )
                    assert answer.status_code == 302, answer.text[:1000]
                (name,) = _users(hub) - set(names)
                names.append(name)
                tokens.append(hub.user_token(name))
                refresh.append(hub.auth_state(name)["refresh_token"])
                token_api, audit_api = _calls(hub, tokens[-1])
                assert token_api.status_code == 200 and audit_api.status_code == 201
            crypt_key = hub.crypt_key
        blocked, left_out, kept = names
        policy = {"blocked_users": [blocked], "allow_all": False, "allowed_users": [kept]}
        with run_hub(
            tmp_path / "hub", issuers, port=port, crypt_key=crypt_key, authenticator=policy
        ) as hub:
            deadline = time.monotonic() + 60
            while set(_withdrawals(hub)) != {blocked, left_out}:  # nobody has called yet
                assert time.monotonic() < deadline, (_withdrawals(hub), hub.log_text()[-3000:])
                time.sleep(0.2)
            for name, token, why in (
                (blocked, tokens[0], "blocked"),
                (left_out, tokens[1], "no longer allowed"),
            ):
                token_api, audit_api = _calls(hub, token)
                assert token_api.status_code == 403, token_api.text
                assert token_api.json()["error"] == "access_withdrawn"
                assert why in token_api.json()["message"]
                assert audit_api.status_code == 403, audit_api.text
                assert not hub.auth_state(name).get("access_token")
            assert not _active(sandbox, refresh[0]) and not _active(sandbox, refresh[1])
            withdrawn = _withdrawals(hub)
            assert len(withdrawn[blocked]) == 1 and "blocked" in withdrawn[blocked][0]
            assert "no longer allowed" in withdrawn[left_out][0]
            assert len(withdrawn[left_out]) == 1
            assert all("EHR grant revoked" in d[0] for d in withdrawn.values())

            # the allowed user is untouched, until the admin deletes them
            token_api, audit_api = _calls(hub, tokens[2])
            assert token_api.status_code == 200 and audit_api.status_code == 201
            assert _active(sandbox, refresh[2])
            with hub.api(hub.admin_token) as api:
                assert api.delete(f"/users/{kept}").status_code == 204
            token_api, audit_api = _calls(hub, tokens[2])
            # JupyterHub deleted the user's API tokens with the user: no one to answer 403 to
            assert token_api.status_code == 401 and audit_api.status_code == 403
            assert not _active(sandbox, refresh[2])
            assert "deleted" in _withdrawals(hub)[kept][0]
    for secret in refresh:
        assert secret not in (tmp_path / "hub" / "jupyterhub.log").read_text()
