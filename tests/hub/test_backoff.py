"""Back-off during an EHR outage: one refresh attempt per period, not one per call.

A real sandbox issues access tokens that live 4 s; once one has expired, the
sandbox is stopped and the notebook keeps asking the token API. The hub must
answer 503 with Retry-After without asking the dead EHR on every call, account
for every call in a few audit records, and recover once the EHR is back (the
same sandbox data on the same port).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, patient_ids, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.hub.backoff import RefreshBackoff, is_outage
from jupyterhub_smart.smart.errors import DiscoveryError, TokenEndpointError

from .conftest import sandbox_client

LIFETIME = 4
CALLS = 20
HELD_BACK = "request(s) for a fresh token answered without asking the EHR"


def _refresh_failures(hub: Hub) -> list[str]:
    """Descriptions of the ``refresh-failed`` records in the hub's audit trail."""
    found = []
    for line in hub.audit_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("subtype", [{}])[0].get("code") == "refresh-failed":
            found.append(str(event.get("outcomeDesc")))
    return found


def _held_back(descriptions: list[str]) -> int:
    """Calls the back-off records say were answered without asking the EHR."""
    return sum(int(d.split(": ")[-1].split(" ")[0]) for d in descriptions if HELD_BACK in d)


def _login(hub: Hub, sandbox: SandboxProcess) -> tuple[str, str]:
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
        assert answer.status_code == 302, answer.text[:1000]
    with hub.api(hub.admin_token) as api:
        name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
    return name, hub.user_token(name)


@pytest.mark.slow
def test_ehr_outage_is_asked_once_per_back_off_period_and_recovers(tmp_path: Path) -> None:
    port = free_port()
    clients = [sandbox_client("hub-backoff", f"http://127.0.0.1:{port}", type="public")]
    lifetime = ["--access-token-lifetime", str(LIFETIME)]
    with run_sandbox(tmp_path / "ehr", clients, extra_args=lifetime) as sandbox:
        options = {"refresh_backoff_initial": 4.0, "refresh_backoff_max": 8.0}
        issuers = {sandbox.iss: {"client_id": "hub-backoff"}}
        with run_hub(tmp_path / "hub", issuers, port=port, authenticator=options) as hub:
            _name, token = _login(hub, sandbox)
            api = httpx.Client(headers={"Authorization": f"token {token}"}, timeout=30)
            url = f"{hub.url}/hub/api/smart/token"
            first = api.get(url)
            assert first.status_code == 200, first.text
            time.sleep(max(0.0, first.json()["expires_at"] - time.time()) + 0.5)
            sandbox.stop()

            answers = [api.get(url) for _ in range(CALLS)]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                body = answer.json()
                assert body["error"] == "ehr_unavailable"
                assert 1 <= int(answer.headers["Retry-After"]) == body["retry_after"] <= 8
            attempts = [d for d in _refresh_failures(hub) if "next attempt in" in d]
            assert 1 <= len(attempts) < CALLS  # not one attempt per call
            assert "could not be reached" in attempts[0]
            assert hub.log_text().count("Refresh for") == len(attempts)

            with run_sandbox(
                tmp_path / "ehr-again",
                clients,
                extra_args=lifetime,
                data_dir=sandbox.data_dir,
                port=sandbox.port,
            ) as again:
                time.sleep(int(answers[-1].headers["Retry-After"]))
                back = api.get(url)
                assert back.status_code == 200, back.text
                fhir = httpx.get(
                    f"{again.iss}/Patient/{back.json()['patient']}",
                    headers={"Authorization": f"Bearer {back.json()['access_token']}"},
                    timeout=30,
                )
                assert fhir.status_code == 200
                # every call is accounted for: an attempt, or counted in a back-off record
                deadline = time.monotonic() + 30
                while _held_back(_refresh_failures(hub)) + len(attempts) < CALLS:
                    assert time.monotonic() < deadline, _refresh_failures(hub)
                    time.sleep(0.1)
                records = _refresh_failures(hub)
                assert _held_back(records) + len(attempts) == CALLS
                assert len(records) <= 2 * len(attempts)  # bounded, whatever the call rate
                assert api.get(url).status_code == 200
            api.close()


def test_back_off_doubles_up_to_its_cap_and_ends_with_a_success() -> None:
    now = [0.0]
    backoff = RefreshBackoff(5.0, 30.0, clock=lambda: now[0])
    assert backoff.waiting("ehr") is None
    delays = []
    for _ in range(5):
        period, _previous = backoff.failed("ehr", "down")
        delays.append(period.delay)
        assert backoff.waiting("ehr") is period
        assert backoff.waiting("other-ehr") is None  # per issuer
        now[0] = period.until
        assert backoff.waiting("ehr") is None  # the period is over: ask again
    assert delays == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert RefreshBackoff.close(period) == 1 and RefreshBackoff.close(period) == 0
    backoff.succeeded("ehr")
    assert backoff.failed("ehr", "down again")[0].delay == 5.0


def test_only_an_outage_holds_back_the_whole_ehr() -> None:
    assert is_outage(TokenEndpointError("no answer", status=504))
    assert is_outage(TokenEndpointError("busy", oauth_error="temporarily_unavailable"))
    assert is_outage(DiscoveryError("down"))
    assert not is_outage(TokenEndpointError("odd request", oauth_error="invalid_request"))
