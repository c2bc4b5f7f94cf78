"""An EHR that answers a refresh after the hub's callers gave up: the rotated tokens are kept.

A real sandbox rotates the refresh token on every refresh and, here
(``--token-answer-delay``), answers a code exchange or a refresh 4 s after it
spent the code or the old refresh token. The hub's callers wait 1 s
(``refresh_wait``) and its other EHR requests 1 s (``http_timeout``); token
requests have 30 s (``token_timeout``). The sign-in completes; callers get 503
with Retry-After meanwhile, share the one refresh, and the hub stores what the
EHR answers, so the user's grant stays alive at the EHR. A hub told to stop
(SIGTERM) while such a refresh is at the EHR waits for its answer and stores
it before it exits (``shutdown_grace``).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hub_process import Browser, Hub, default_database, ehr_launch, patient_ids, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.audit.verify import verify

from .conftest import sandbox_client

LIFETIME = 4
DELAY = 4
CLIENT = "hub-slow"


def _active(sandbox: SandboxProcess, token: str) -> bool:
    """The EHR's own view of a token (RFC 7662 introspection by the hub's client)."""
    answer = httpx.post(
        f"{sandbox.origin}/auth/introspect", data={"token": token, "client_id": CLIENT}, timeout=30
    )
    answer.raise_for_status()
    return bool(answer.json()["active"])


def _token_posts(sandbox: SandboxProcess) -> int:
    """Answered token requests in the sandbox's access log (one sign-in, then refreshes)."""
    return len(re.findall(r"POST /auth/token 200", sandbox.log_text()))


@dataclass
class _Session:
    """A user signed in through the slow EHR, whose access token has just expired."""

    name: str
    signed_in: dict[str, Any]  # the auth_state right after the sign-in
    url: str  # the token API
    headers: dict[str, str]  # the user's API token


@contextmanager
def _slow_ehr(tmp_path: Path) -> Iterator[tuple[SandboxProcess, int]]:
    """The sandbox answering token requests DELAY s late, and the hub port it redirects to."""
    port = free_port()
    clients = [sandbox_client(CLIENT, f"http://127.0.0.1:{port}", type="public")]
    slow = ["--access-token-lifetime", str(LIFETIME), "--token-answer-delay", str(DELAY)]
    with run_sandbox(tmp_path / "ehr", clients, extra_args=slow) as sandbox:
        yield sandbox, port


def _sign_in_and_let_expire(sandbox: SandboxProcess, hub: Hub) -> _Session:
    """An EHR launch (its code exchange is answered after http_timeout), then the token's life."""
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
        assert answer.status_code == 302, answer.text[:1000]
    with hub.api(hub.admin_token) as api:
        name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
    headers = {"Authorization": f"token {hub.user_token(name)}"}
    signed_in = hub.auth_state(name)
    time.sleep(max(0.0, signed_in["expires_at"] - time.time()) + 0.5)
    return _Session(name, signed_in, f"{hub.url}/hub/api/smart/token", headers)


@pytest.mark.slow
def test_a_refresh_answered_after_the_callers_gave_up_is_stored(tmp_path: Path) -> None:
    with _slow_ehr(tmp_path) as (sandbox, port):
        options = {"http_timeout": 1.0, "refresh_wait": 1.0, "token_timeout": 30.0}
        issuers = {sandbox.iss: {"client_id": CLIENT}}
        with run_hub(tmp_path / "hub", issuers, port=port, authenticator=options) as hub:
            session = _sign_in_and_let_expire(sandbox, hub)
            name, url, headers = session.name, session.url, session.headers
            signed_in = session.signed_in

            # the token has expired: three kernels ask at once and wait 1 s each
            with ThreadPoolExecutor(3) as pool:
                waiting = list(
                    pool.map(lambda _: httpx.get(url, headers=headers, timeout=30), range(3))
                )
            for response in waiting:
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "ehr_unavailable"
                assert 1 <= int(response.headers["Retry-After"]) <= 5
                assert "access_token" not in response.json()

            deadline = time.monotonic() + 30
            while (fresh := httpx.get(url, headers=headers, timeout=30)).status_code != 200:
                assert fresh.status_code == 503, fresh.text  # never reauthentication_required
                assert time.monotonic() < deadline, fresh.text
                time.sleep(int(fresh.headers["Retry-After"]))
            assert fresh.json()["access_token"] != signed_in["access_token"]
            stored = hub.auth_state(name)["refresh_token"]
            assert stored != signed_in["refresh_token"]
            assert _active(sandbox, stored)  # the grant lives on at the EHR
            assert not _active(sandbox, signed_in["refresh_token"])  # rotated: spent
            assert _token_posts(sandbox) == 2  # the sign-in, then one refresh for every caller


@pytest.mark.slow
def test_a_hub_stopped_during_a_refresh_stores_the_rotated_tokens_first(tmp_path: Path) -> None:
    with _slow_ehr(tmp_path) as (sandbox, port):
        options = {"http_timeout": 1.0, "refresh_wait": 1.0, "token_timeout": 30.0}
        issuers = {sandbox.iss: {"client_id": CLIENT}}
        same_hub = {
            "port": port,
            "authenticator": options,
            "crypt_key": "ab" * 32,
            "database": default_database(tmp_path / "hub-1"),
            "audit_path": tmp_path / "audit.jsonl",
        }
        with run_hub(tmp_path / "hub-1", issuers, **same_hub) as hub:  # type: ignore[arg-type]
            session = _sign_in_and_let_expire(sandbox, hub)
            name, signed_in = session.name, session.signed_in
            waiting = httpx.get(session.url, headers=session.headers, timeout=30)
            assert waiting.status_code == 503, waiting.text  # the refresh is at the EHR
            hub.process.send_signal(signal.SIGTERM)
            hub.process.wait(timeout=60)
            assert "waiting up to 20 s for its answer" in hub.log_text()
            assert "Stopped before the EHR answered" not in hub.log_text()
        with run_hub(tmp_path / "hub-2", issuers, **same_hub) as hub:  # type: ignore[arg-type]
            stored = hub.auth_state(name)["refresh_token"]
            assert stored != signed_in["refresh_token"]  # the answer was stored at the stop
            assert _active(sandbox, stored)  # the grant lives on: the next refresh works
            assert not _active(sandbox, signed_in["refresh_token"])
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert verify([tmp_path / "audit.jsonl"]).records == len(records)  # one chain, both runs
    actions = [record["subtype"][0]["code"] for record in records]
    assert actions.count("token-refreshed") == 1  # recorded at the stop
