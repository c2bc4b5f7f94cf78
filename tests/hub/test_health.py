"""Readiness at /hub/api/smart/health against real hubs: ready, audit log failing, EHR down.

The probe URL answers without authentication and says nothing but ready or not;
/hub/api/smart/health/detail says why, to the hub's admins only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from hub_process import Hub, run_hub
from sandbox_process import free_port, run_sandbox

from .conftest import ONE_BY_ONE, SmartEnv, sandbox_client


def _health(hub: Hub) -> httpx.Response:
    return httpx.get(f"{hub.url}/hub/api/smart/health", timeout=30)


def _detail(hub: Hub, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.get(f"{hub.url}/hub/api/smart/health/detail", headers=headers, timeout=30)


def _wait_for_status(hub: Hub, status: int, what: str, timeout: float = 60.0) -> httpx.Response:
    """Probe until ``status``, as Kubernetes does (a probe starts discovery when none succeeded)."""
    deadline = time.monotonic() + timeout
    while (response := _health(hub)).status_code != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"/hub/api/smart/health never answered {status} ({what})")
        time.sleep(0.1)
    return response


def test_ready_hub_answers_200_without_auth_and_without_details(smart_env: SmartEnv) -> None:
    hub = smart_env.hub
    response = _wait_for_status(hub, 200, "the sandboxes are up")
    assert response.json() == {"status": "ready"}
    assert response.headers["Cache-Control"] == "no-store"
    # the probe URL ignores who asks: an admin gets the same two words
    with hub.api(hub.admin_token) as api:
        assert api.get("/smart/health").json() == {"status": "ready"}


def test_detail_is_for_admins_only(smart_env: SmartEnv) -> None:
    hub = smart_env.hub
    _wait_for_status(hub, 200, "the sandboxes are up")
    anonymous = _detail(hub, None)
    assert anonymous.status_code == 401
    assert "issuers" not in anonymous.text
    user = _detail(hub, hub.user_token("health-user", create=True))
    assert user.status_code == 403
    assert user.json()["scope"] == "admin:users"
    assert smart_env.public.iss not in user.text
    admin = _detail(hub, hub.admin_token)
    assert admin.status_code == 200, admin.text
    detail = admin.json()
    assert detail["status"] == "ready" and detail["reasons"] == []
    assert detail["audit_log"]["writable"] is True
    # every configured issuer is listed; the hub is ready once any one was discovered
    # (by a probe, or by a sign-in of another test of the package's hub)
    assert set(detail["issuers"]) == {smart_env.public.iss, smart_env.jwt.iss}
    assert any(state["discovered"] for state in detail["issuers"].values())
    assert detail["database"] == {"available": True, "last_error": None}


@pytest.mark.slow
def test_hub_whose_ehr_is_down_from_the_start_is_unavailable_until_it_comes_up(
    tmp_path: Path,
) -> None:
    hub_port, ehr_port = free_port(), free_port()
    iss = f"http://127.0.0.1:{ehr_port}/fhir"  # nothing listens there yet
    issuers = {iss: {"client_id": "hub-health"}}
    with run_hub(tmp_path / "hub", issuers, port=hub_port, authenticator=ONE_BY_ONE) as hub:
        down = _health(hub)
        assert down.status_code == 503
        assert down.json() == {"status": "unavailable"}
        assert iss not in down.text
        detail = _detail(hub, hub.admin_token).json()
        assert detail["reasons"] == ["no_issuer_discovered"]
        assert detail["issuers"][iss]["discovered"] is False
        assert "could not reach" in detail["issuers"][iss]["last_error"]
        assert detail["audit_log"]["writable"] is True

        client = sandbox_client("hub-health", hub.url, type="public")
        with run_sandbox(tmp_path / "sandbox", [client], port=ehr_port) as sandbox:
            assert sandbox.iss == iss
            assert _wait_for_status(hub, 200, "the EHR came up").json() == {"status": "ready"}
        detail = _detail(hub, hub.admin_token).json()
        assert detail["issuers"][iss]["discovered"] is True
        # ready it stays: an EHR that goes down after discovery fails sign-ins, not the hub
        assert _health(hub).status_code == 200
    log = hub.log_text()
    assert "Traceback" not in log and " 500 GET" not in log


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="a tiny tmpfs that really fills up needs root")
def test_hub_is_unavailable_while_its_audit_log_fails_closed(tmp_path: Path) -> None:
    from audit.helpers import fill, tmpfs, wait_for

    port = free_port()
    client = sandbox_client("hub-health-audit", f"http://127.0.0.1:{port}", type="public")
    with (
        run_sandbox(tmp_path / "sandbox", [client]) as sandbox,
        tmpfs(tmp_path / "disk", size="256k") as disk,
    ):
        issuers = {sandbox.iss: {"client_id": "hub-health-audit"}}
        options = {**ONE_BY_ONE, "audit_log_path": str(disk / "audit.jsonl")}
        with run_hub(tmp_path / "hub", issuers, port=port, authenticator=options) as hub:
            _wait_for_status(hub, 200, "the sandbox is up")
            filler = fill(disk)
            # each refused launch is an audit record: the log finds the disk full on one
            for n in range(200):
                httpx.get(hub.login_url, params={"iss": f"https://refused-{n}.example/fhir"})
                if "is not writable (ENOSPC" in hub.log_text():
                    break
            failing = _health(hub)
            assert failing.status_code == 503
            assert failing.json() == {"status": "unavailable"}
            detail = _detail(hub, hub.admin_token)
            assert detail.status_code == 503
            assert detail.json()["reasons"] == ["audit_log_failing"]
            assert detail.json()["audit_log"]["failure"] == "ENOSPC"
            assert detail.json()["audit_log"]["backlog_events"] >= 1

            filler.unlink()  # room again: the held records are written, the hub is ready
            wait_for(lambda: _health(hub).status_code == 200, "the audit log to recover", 120)
            assert _detail(hub, hub.admin_token).json()["audit_log"]["backlog_events"] == 0


@pytest.mark.slow
def test_hub_is_unavailable_while_its_database_does_not_answer(tmp_path: Path) -> None:
    from pg_process import new_database, run_postgres

    port = free_port()
    client = sandbox_client("hub-health-db", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(tmp_path / "sandbox", [client]) as sandbox, run_postgres() as postgres:
        issuers = {sandbox.iss: {"client_id": "hub-health-db"}}
        with run_hub(
            tmp_path / "hub",
            issuers,
            port=port,
            authenticator=ONE_BY_ONE,
            database=new_database(postgres),
        ) as hub:
            _wait_for_status(hub, 200, "the sandbox is up")
            assert _detail(hub, hub.admin_token).json()["database"]["available"] is True
            postgres.stop()
            try:
                down = _wait_for_status(hub, 503, "the database stopped")
                assert down.json() == {"status": "unavailable"}
            finally:
                postgres.start()
            _wait_for_status(hub, 200, "the database is back")
            actions = [
                json.loads(line)["subtype"][0]["code"]
                for line in hub.audit_path.read_text().splitlines()
            ]
            assert actions.index("database-unavailable") < actions.index("database-recovered")
        log = hub.log_text()
        assert "Traceback" not in log and " 500 GET /hub/api/smart/health" not in log
