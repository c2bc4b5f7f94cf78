"""connect() in a hub's world: a real JupyterHub with the SMARTAuthenticator and a real sandbox.

An EHR launch signs a practitioner in; the notebook side then gets its tokens
only through the hub's token API, with the sandbox's access tokens living 4
seconds, so that reading for ~10 s runs through several refreshes made by the
hub (refresh token rotation included) without one failed read.

The issue's soak test (one-minute tokens, ten minutes of reading) is the same
test with ``SMART_SOAK_TOKEN_LIFETIME=60 SMART_SOAK_SECONDS=600``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nbformat
import pytest
from hub_process import Browser, Hub, ehr_launch, run_hub
from nbclient import NotebookClient
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.demo import DEMO_NOTEBOOKS
from jupyterhub_smart.hub.scopes import AUDIT_SCOPE, TOKEN_SCOPE
from jupyterhub_smart.notebook import HubTokenProvider, connect, connect_async
from jupyterhub_smart.notebook.reporting import HubAuditReporter

from .sandbox_tokens import SEEN_SECRETS

PATIENT = "patient-00003"
NOTEBOOK = DEMO_NOTEBOOKS / "patient-vitals.ipynb"
LIFETIME = int(os.environ.get("SMART_SOAK_TOKEN_LIFETIME", "4"))
SOAK_SECONDS = float(os.environ.get("SMART_SOAK_SECONDS", str(2.5 * LIFETIME)))


@dataclass
class HubWorld:
    hub: Hub
    sandbox: SandboxProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubWorld]:
    work: Path = tmp_path_factory.mktemp("notebook-hub")
    port = free_port()
    client = {
        "client_id": "hub-public",
        "type": "public",
        "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
    }
    with run_sandbox(
        work / "sandbox", [client], extra_args=["--access-token-lifetime", str(LIFETIME)]
    ) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}}
        options = {"refresh_leeway": min(1.0, LIFETIME / 4)}
        with run_hub(work / "hub", issuers, port=port, authenticator=options) as hub:
            yield HubWorld(hub, sandbox)


def _login(world: HubWorld, patient: str) -> str:
    """EHR launch for ``patient``; returns the hub user's name."""
    with Browser() as browser:
        answer = ehr_launch(browser, world.sandbox, world.hub, patient)
        assert answer.status_code == 302, answer.text[:1000]
    users = httpx.get(
        f"{world.hub.url}/hub/api/users",
        headers={"Authorization": f"token {world.hub.admin_token}"},
    ).json()
    names = [u["name"] for u in users if u["name"].endswith(f"-{world.sandbox.port}-fhir")]
    assert names
    return str(names[0])


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 240)
def test_connect_reads_through_the_hub_token_api_across_refreshes(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _login(world, PATIENT)
    api_token = world.hub.user_token(name)
    SEEN_SECRETS.add(api_token)
    monkeypatch.setenv("SMART_TOKEN_API_URL", f"{world.hub.url}/hub/api/smart/token")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    with connect(page_size=20) as fhir:
        assert isinstance(fhir.provider, HubTokenProvider)
        assert fhir.context.patient == PATIENT
        assert fhir.context.fhir_base_url == world.sandbox.iss
        assert (fhir.context.fhir_user or "").startswith("Practitioner/")
        hr = fhir.observations(code="8867-4").to_pandas()
        assert len(hr) > 0 and set(hr["subject"]) == {f"Patient/{PATIENT}"}
        seen = {fhir.provider.get().access_token}
        deadline = time.monotonic() + SOAK_SECONDS
        reads = 0
        while time.monotonic() < deadline:
            assert fhir.patient["id"] == PATIENT
            assert len(fhir.observations(code="85354-9").to_pandas()) > 0
            seen.add(fhir.provider.get().access_token)
            reads += 1
        SEEN_SECRETS.update(seen)
        assert reads > 3
        assert len(seen) >= 2, "the hub never refreshed"
        assert fhir.provider.fetches >= 2


@pytest.mark.slow
def test_a_new_launch_for_another_patient_reaches_the_running_notebook(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _login(world, "patient-00001")
    api_token = world.hub.user_token(name)
    SEEN_SECRETS.add(api_token)
    monkeypatch.setenv("SMART_TOKEN_API_URL", f"{world.hub.url}/hub/api/smart/token")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    with connect() as fhir:
        assert fhir.context.patient == "patient-00001"
        assert _login(world, "patient-00002") == name
        deadline = time.monotonic() + 3 * LIFETIME  # the cached token expires within LIFETIME s
        while fhir.context.patient != "patient-00002" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fhir.context.patient == "patient-00002"
        assert fhir.patient["id"] == "patient-00002"


@pytest.mark.slow
def test_demo_notebook_in_a_hub_session(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The demo notebook, as a kernel in a SMART hub's server runs it (plain ``connect()``)."""
    name = _login(world, PATIENT)
    api_token = world.hub.user_token(name)
    SEEN_SECRETS.add(api_token)
    monkeypatch.delenv("SMART_DEMO_FHIR_BASE", raising=False)
    for key, value in _spawner_env(world, api_token).items():
        monkeypatch.setenv(key, value)
    before = len(_data_access(world, name, "Observation"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    # the demo asks connect() for the banner (an EHR launch itself sets need_patient_banner false)
    assert "smart-patient-banner" in html and f"Patient/{PATIENT}" in html
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert api_token not in nbformat.writes(nb)
    # the kernel's searches are on the hub's audit trail, with no argument in the notebook
    reported = _data_access(world, name, "Observation")[before:]
    assert reported and sum(int(_details(r)["count"]) for r in reported) > 0


def test_no_secret_in_the_hub_and_sandbox_logs(world: HubWorld) -> None:
    hub_log = world.hub.log_path.read_text(encoding="utf-8", errors="replace")
    sandbox_log = world.sandbox.log_text()
    leaked = [s[:6] for s in SEEN_SECRETS if s in hub_log or s in sandbox_log]
    assert not leaked


def _spawner_env(world: HubWorld, api_token: str) -> dict[str, str]:
    """The variables a jupyterhub-smart spawner gives a server: the hub's internal API URL."""
    settings = json.loads((world.hub.workdir / "settings.json").read_text())
    api_url = f"http://127.0.0.1:{settings['hub_port']}/hub/api"
    return {
        "JUPYTERHUB_API_URL": api_url,
        "SMART_TOKEN_API_URL": f"{api_url}/smart/token",
        "JUPYTERHUB_API_TOKEN": api_token,
    }


def _data_access(world: HubWorld, name: str, resource_type: str) -> list[dict[str, object]]:
    """The hub's data-access records of ``name`` about searches of ``resource_type``."""
    records = [json.loads(line) for line in world.hub.audit_path.read_bytes().splitlines()]
    return [
        r
        for r in records
        if r["subtype"][0]["code"] == "data-access"
        and r["agent"][0]["altId"] == name
        and r["entity"][-1].get("name") == resource_type
    ]


def _details(record: dict[str, object]) -> dict[str, str]:
    target = record["entity"][-1]  # type: ignore[index]
    return {d["type"]: d["valueString"] for d in target["detail"]}


@pytest.mark.slow
def test_plain_connect_reports_data_access_to_the_hub(
    world: HubWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No event_sink argument: the hub's audit log still gets the search."""
    name = _login(world, PATIENT)
    # the scopes JupyterHub gives a spawned server's JUPYTERHUB_API_TOKEN ("server" role,
    # which the authenticator extends with the SMART scopes)
    server_scopes = [f"users:activity!user={name}", f"access:servers!server={name}/"]
    smart_scopes = [f"{TOKEN_SCOPE}!user={name}", f"{AUDIT_SCOPE}!user={name}"]
    api_token = world.hub.user_token(name, scopes=server_scopes + smart_scopes)
    SEEN_SECRETS.add(api_token)
    for key, value in _spawner_env(world, api_token).items():
        monkeypatch.setenv(key, value)
    before = len(_data_access(world, name, "Observation"))
    fhir = connect(page_size=5)
    assert isinstance(fhir.event_sink, HubAuditReporter)
    assert connect().event_sink is fhir.event_sink  # one reporter per kernel, not per connect()
    frame = fhir.observations(code="8867-4").to_pandas()
    pages = -(-len(frame) // 5)
    assert pages >= 2, "the test wants a search of several pages"
    fhir.close()  # flushes: the events are in the hub's log when close() returns
    records = _data_access(world, name, "Observation")[before:]
    assert len(records) == pages
    for record in records:  # every page names the search's parameters, never their values
        detail = _details(record)
        assert detail["interaction"] == "search-type" and detail["http-status"] == "200"
        assert detail["search-parameter-names"] == "_count,_sort,code,patient"
    assert sum(int(_details(r)["count"]) for r in records) == len(frame)
    patients = [
        e["what"]["reference"]
        for e in records[0]["entity"]  # type: ignore[attr-defined]
        if e.get("what", {}).get("reference", "").startswith("Patient/")
    ]
    assert patients == [f"Patient/{PATIENT}"]
    assert records[0]["agent"][0]["who"]["reference"].startswith("Practitioner/")  # type: ignore[index]
    trail = world.hub.audit_path.read_text()
    assert "8867-4" not in trail and api_token not in trail

    async def weights() -> int:  # the async twin reports the same way
        client = connect_async(page_size=5)
        assert client.event_sink is fhir.event_sink
        frame = await (await client.observations(code="29463-7")).to_pandas()
        await client.aclose()  # flushes too
        return len(frame)

    before = len(_data_access(world, name, "Observation"))
    weight_rows = asyncio.run(weights())
    records = _data_access(world, name, "Observation")[before:]
    assert len(records) == -(-weight_rows // 5) and weight_rows > 0


SCRIPT = """
from jupyterhub_smart.notebook import connect
fhir = connect(show_banner=False)
print(len(fhir.search("Condition", patient=fhir.context.patient).to_pandas()))
"""


@pytest.mark.slow
def test_a_kernels_last_events_reach_the_hub_at_exit(world: HubWorld) -> None:
    """A process that never closes its client still delivers its reports (atexit)."""
    name = _login(world, PATIENT)
    api_token = world.hub.user_token(name)
    SEEN_SECRETS.add(api_token)
    before = len(_data_access(world, name, "Condition"))
    env = {**os.environ, **_spawner_env(world, api_token)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert api_token not in done.stdout + done.stderr
    records = _data_access(world, name, "Condition")[before:]
    assert len(records) == 1
    assert _details(records[0])["count"] == done.stdout.strip()
