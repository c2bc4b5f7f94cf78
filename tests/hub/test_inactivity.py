"""Automatic logoff: a real hub with a short ``inactivity_timeout``, a real sandbox, a real server.

One user signs in through an EHR launch and starts a single-user server. A
client holding that server's own API token (as a kernel does) keeps calling
the token API for well over the timeout: the user stays signed in. Then the
client stops: the sweep ends the grant at the EHR, drops the tokens, ends the
browser session and records it; the notebook's next read raises
ReauthenticationRequired. The waits are for the hub to act; nothing asserts
how long anything took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, patient_ids, run_hub
from leak_scan import saw
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.notebook import HubTokenProvider, ReauthenticationRequired, connect

from .conftest import sandbox_client

TIMEOUT = 10  # seconds; the sweep runs every second at this timeout


@dataclass
class IdleEnv:
    hub: Hub
    sandbox: SandboxProcess


@pytest.fixture(scope="module")
def idle_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdleEnv]:
    work = tmp_path_factory.mktemp("idle-env")
    port = free_port()
    client = sandbox_client("hub-idle", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(work / "sandbox", [client]) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-idle"}}
        extra = "c.JupyterHub.activity_resolution = 1"
        options = {"inactivity_timeout": TIMEOUT}
        with run_hub(work / "hub", issuers, port=port, authenticator=options, extra=extra) as hub:
            yield IdleEnv(hub, sandbox)


def _events(hub: Hub, action: str, name: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in hub.audit_path.read_text().splitlines() if line]
    return [
        e
        for e in events
        if e.get("subtype", [{}])[0].get("code") == action and name in json.dumps(e["agent"])
    ]


def _start_server(hub: Hub, name: str, browser: Browser) -> tuple[int, str]:
    """Spawn the user's server; (pid, the server's own API token from its environment).

    The browser polls the hub meanwhile, as JupyterHub's spawn-pending page does.
    """
    with hub.api(hub.admin_token) as api:
        started = api.post(f"/users/{name}/server")
        assert started.status_code in (201, 202), started.text
        deadline = time.monotonic() + 120
        while True:
            server = api.get(f"/users/{name}").json()["servers"].get("")
            if server and server.get("ready"):
                break
            assert time.monotonic() < deadline, server
            assert browser.get(f"{hub.url}/hub/home").status_code == 200
            time.sleep(0.5)
    pid = int(server["state"]["pid"])
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    env = dict(line.split("=", 1) for line in raw.split("\0") if "=" in line)
    return pid, env["JUPYTERHUB_API_TOKEN"]


def test_idle_user_is_logged_off_and_a_working_kernel_is_not(
    idle_env: IdleEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, sandbox = idle_env.hub, idle_env.sandbox
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
        assert answer.status_code == 302, answer.text[:1000]
        assert browser.get(f"{hub.url}/hub/home").status_code == 200  # signed in
        with hub.api(hub.admin_token) as api:
            name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
        _pid, server_token = _start_server(hub, name, browser)
        saw(server_token, kind="hub API token")
        token_api = f"{hub.url}/hub/api/smart/token"
        monkeypatch.setenv("JUPYTERHUB_API_URL", f"{hub.url}/hub/api")
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", server_token)
        try:
            with connect(
                token_provider=HubTokenProvider(token_api, server_token), show_banner=False
            ) as fhir:
                # a kernel at work: token API calls with the server's own token, for 2.5 timeouts
                patient = str(fhir.context.patient)
                until = time.monotonic() + 2.5 * TIMEOUT
                while time.monotonic() < until:
                    answer = httpx.get(
                        token_api, headers={"Authorization": f"token {server_token}"}
                    )
                    assert answer.status_code == 200, hub.log_text()[-3000:]
                    assert fhir.read("Patient", patient)["id"] == patient
                    time.sleep(1)
                assert not _events(hub, "automatic-logoff", name)
                access_token = str(answer.json()["access_token"])
                saw(access_token, kind="access token")

                # the kernel stops; nothing else happens for this user
                deadline = time.monotonic() + 10 * TIMEOUT
                while not _events(hub, "automatic-logoff", name):
                    assert time.monotonic() < deadline, hub.log_text()[-3000:]
                    time.sleep(1)

                # the grant ended at the EHR: the token the kernel holds is refused there
                assert (
                    httpx.get(
                        f"{sandbox.iss}/Patient/{patient}",
                        headers={"Authorization": f"Bearer {access_token}"},
                    ).status_code
                    == 401
                )
                assert _events(hub, "token-revoked", name)
                # the notebook's next call says: sign in again
                with pytest.raises(ReauthenticationRequired):
                    fhir.read("Patient", patient)
        finally:
            with hub.api(hub.admin_token) as api:
                api.delete(f"/users/{name}/server")
        state = hub.auth_state(name)
        assert not state.get("access_token") and not state.get("refresh_token")
        assert state["iss"] == sandbox.iss  # who they were stays, for the sign-in page
        # the next browser visit signs in again
        home = browser.get(f"{hub.url}/hub/home")
        assert home.status_code == 302 and "/hub/login" in home.headers["location"]
