"""An unauthenticated login flood against a real hub: sign-ins in flight survive, the audit
trail counts the flood instead of writing it record by record.

The hub trusts its loopback proxy as a downstream hop (``trusted_downstream_ips``), as a
deployment behind an ingress would, so each client's ``X-Forwarded-For`` names it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hub_process import Browser, Hub, location, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from .conftest import sandbox_client

PER_CLIENT = 5
GLOBAL = 20
WINDOW = 30  # seconds: longer than the flood takes to send
RECORDS = 3
ATTACKER = "203.0.113.7"
USER = "198.51.100.9"


@dataclass
class FloodEnv:
    hub: Hub
    sandbox: SandboxProcess


@pytest.fixture(scope="module")
def flood_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FloodEnv]:
    work = tmp_path_factory.mktemp("flood-env")
    port = free_port()
    client = sandbox_client("hub-flood", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(work / "sandbox", [client]) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-flood"}}
        options = {
            "max_pending_logins_per_client": PER_CLIENT,
            "max_pending_logins": GLOBAL,
            "unauthenticated_audit_window": WINDOW,
            "unauthenticated_audit_records": RECORDS,
        }
        extra = 'c.JupyterHub.trusted_downstream_ips = ["127.0.0.1"]'
        with run_hub(work / "hub", issuers, port=port, authenticator=options, extra=extra) as hub:
            yield FloodEnv(hub, sandbox)


def _launch(hub: Hub, iss: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(hub.login_url, params={"iss": iss}, headers=headers, timeout=30)


def _records_from(hub: Hub, action: str, address: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in hub.audit_path.read_text().splitlines() if line]
    return [
        e
        for e in events
        if e.get("subtype", [{}])[0].get("code") == action and address in json.dumps(e["agent"])
    ]


def _accounted(records: list[dict[str, object]]) -> int:
    """Requests the records stand for: 1 per plain record, the count of a summary."""
    total = 0
    for record in records:
        found = re.search(r"aggregated: (\d+) more", str(record.get("outcomeDesc", "")))
        total += int(found.group(1)) if found else 1
    return total


def test_flood_neither_evicts_a_sign_in_in_flight_nor_fills_the_trail(
    flood_env: FloodEnv,
) -> None:
    hub, sandbox = flood_env.hub, flood_env.sandbox
    with Browser() as browser:
        # a real user starts signing in and sits on the EHR's consent page
        started = browser.client.get(
            hub.login_url, params={"iss": sandbox.iss}, headers={"X-Forwarded-For": USER}
        )
        assert started.status_code == 302, started.text[:1000]
        authorize = location(started)

        # one address floods: its own bound refuses it, X-Real-Ip does not help it
        flood = [_launch(hub, sandbox.iss, {"X-Forwarded-For": ATTACKER}) for _ in range(40)]
        flood += [
            _launch(hub, sandbox.iss, {"X-Forwarded-For": ATTACKER, "X-Real-Ip": f"10.9.9.{i}"})
            for i in range(20)
        ]
        statuses = [r.status_code for r in flood]
        assert statuses.count(302) == PER_CLIENT and statuses.count(429) == 60 - PER_CLIENT
        refused = next(r for r in flood if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert "too many sign-ins" in refused.text.lower()

        # many addresses flood: the hub's bound refuses the newcomers (503)
        spread = [
            _launch(hub, sandbox.iss, {"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"})
            for i in range(GLOBAL)
        ]
        assert {r.status_code for r in spread} == {302, 503}

        # the user accepts on the EHR's page: the sign-in still completes
        hop = browser.follow(authorize, stop_at=hub.callback_url)
        assert hop.status_code == 302, hop.text[:1000]
        done = browser.get(location(hop))
        assert done.status_code == 302, done.text[:1000]
        assert browser.get(f"{hub.url}/hub/home").status_code == 200

    # the trail: a few records per address, then counts, and every request accounted for
    deadline = time.monotonic() + 3 * WINDOW
    while True:
        launched = _records_from(hub, "launch-received", ATTACKER)
        refusals = _records_from(hub, "login-failed", ATTACKER)
        if _accounted(launched) == PER_CLIENT and _accounted(refusals) == 60 - PER_CLIENT:
            break
        assert time.monotonic() < deadline, (launched, refusals)
        time.sleep(0.5)
    assert any("aggregated" in str(r.get("outcomeDesc")) for r in refusals)
    assert len([r for r in refusals if "aggregated" not in str(r.get("outcomeDesc"))]) <= RECORDS
    assert len(launched) + len(refusals) <= 2 * (RECORDS + 1)
    # the spoofed X-Real-Ip addresses are nowhere in the trail
    assert "10.9.9." not in hub.audit_path.read_text()
