"""The hub's PostgreSQL stops under load, then comes back; the hub is not restarted.

A private PostgreSQL server (:mod:`pg_process`) that the tests stop and start,
one hub on it, and the misbehaving EHR of :mod:`.evil_ehr` as its EHR: it
rotates the refresh token on every refresh and can hold a refresh's answer
until the test has stopped the database, so the hub gets new tokens it cannot
store. Notebooks are API tokens of signed-in users calling the token API.

``SMART_TEST_PG_OUTAGE`` sets how long the database stays down (30 s, as the
production guide promises; shorter while working on it).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from hub_process import Browser, Hub, location, query, run_hub
from pg_process import PostgresServer, new_database, run_postgres, selected_database
from sandbox_process import free_port

from jupyterhub_smart.audit.verify import verify

from .conftest import ONE_BY_ONE
from .evil_ehr import EvilEHR, run_evil_ehr

OUTAGE_SECONDS = float(os.environ.get("SMART_TEST_PG_OUTAGE", "30"))


@dataclass
class OutageEnv:
    hub: Hub
    ehr: EvilEHR
    postgres: PostgresServer


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutageEnv]:
    work = tmp_path_factory.mktemp("db-outage")
    with run_postgres() as postgres, run_evil_ehr(free_port()) as ehr:
        issuers = {
            ehr.basic_iss: {
                "client_id": ehr.client_id,
                "client_auth": "client_secret_basic",
                "client_secret": ehr.client_secret,
            }
        }
        options = {"http_timeout": 30.0, **ONE_BY_ONE}
        with run_hub(
            work / "hub", issuers, authenticator=options, database=new_database(postgres)
        ) as hub:
            yield OutageEnv(hub, ehr, postgres)


def _sign_in(env: OutageEnv, practitioner: str, hub: Hub | None = None) -> tuple[str, str]:
    """An EHR sign-in as ``practitioner``: (hub username, a notebook's API token)."""
    hub = hub or env.hub
    env.ehr.mode, env.ehr.fhir_user = "good", f"Practitioner/{practitioner}"
    with Browser() as browser:
        start = browser.get(hub.login_url, params={"iss": env.ehr.basic_iss})
        params = query(location(start))
        env.ehr.nonce = params["nonce"]
        code = "outage-code-" + practitioner
        answer = browser.get(hub.callback_url, params={"code": code, "state": params["state"]})
        assert answer.status_code == 302, answer.text[:1000]
        name = browser.get(f"{hub.url}/hub/api/user").json()["name"]
    return name, hub.user_token(name)


def _rotate_while_down(env: OutageEnv, hub: Hub, name: str, token: str) -> httpx.Response:
    """A refresh comes due and the EHR rotates the refresh token once the database is down.

    Returns the token API's answer to the call that made the refresh; the database
    is left stopped.
    """
    env.ehr.hold, env.ehr.held = threading.Event(), threading.Event()  # refreshes wait from now
    time.sleep(1.5)  # the access token (2 s) is now within the refresh leeway
    with ThreadPoolExecutor(1) as pool:
        due = pool.submit(_token_api, hub, token)
        assert env.ehr.held.wait(timeout=60), "the hub did not refresh"
        env.postgres.stop("fast")
        env.ehr.expires_in = 3600  # the rotated tokens last: no further refresh comes due
        env.ehr.hold.set()  # the EHR answers: the refresh token is rotated now
        env.ehr.hold = None
        return due.result()


def _token_api(hub: Hub, token: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url}/hub/api/smart/token",
        params=params,
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )


def _health(hub: Hub) -> httpx.Response:
    return httpx.get(f"{hub.url}/hub/api/smart/health", timeout=60)


def _records(hub: Hub) -> list[dict[str, object]]:
    return [json.loads(line) for line in hub.audit_path.read_text().splitlines()]


def _actions(records: list[dict[str, object]]) -> list[str]:
    return [r["subtype"][0]["code"] for r in records]  # type: ignore[index]


def _until_ok(hub: Hub, token: str, timeout: float = 60.0) -> httpx.Response:
    """The token API's first 200 for ``token`` (it answers 503 until the database is back)."""
    deadline = time.monotonic() + timeout
    while True:
        response = _token_api(hub, token)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        assert response.status_code == 503, response.text
        time.sleep(0.2)


@pytest.mark.slow
def test_an_outage_under_load_answers_503_and_recovers_without_restart(env: OutageEnv) -> None:
    """503 with Retry-After while the database is down (never 500), 200 again after,
    the same hub process throughout, one record of the outage on the trail, and the
    readiness probe unavailable meanwhile."""
    tokens = [_sign_in(env, f"load-{i}")[1] for i in range(4)]
    assert all(_token_api(env.hub, t).status_code == 200 for t in tokens)
    recorded_before = len(_records(env.hub))
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def load(token: str) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                answers.append(
                    client.get(
                        f"{env.hub.url}/hub/api/smart/token",
                        headers={"Authorization": f"token {token}"},
                    )
                )

    pid = env.hub.process.pid
    with ThreadPoolExecutor(len(tokens)) as pool:
        running = [pool.submit(load, t) for t in tokens]
        try:
            env.postgres.stop("fast")
            time.sleep(OUTAGE_SECONDS)  # the outage itself: its length is the test's subject
            during = list(answers)
            probe_down = _health(env.hub)
            env.postgres.start()
            recovered = [_until_ok(env.hub, t) for t in tokens]
            probe_up = _health(env.hub)
        finally:
            stop.set()
            for future in running:
                future.result()
    statuses = {r.status_code for r in answers}
    assert statuses <= {200, 503}, statuses
    refused = [r for r in during if r.status_code == 503]
    assert refused, "no request was answered while the database was down"
    for response in refused:
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"] == "database_unavailable"
        assert "access_token" not in response.json()
    assert [r.status_code for r in recovered] == [200] * len(tokens)
    # the readiness probe says so too, and nothing more
    assert probe_down.status_code == 503 and probe_down.json() == {"status": "unavailable"}
    assert probe_up.status_code == 200, probe_up.text
    assert env.hub.process.pid == pid and env.hub.alive()
    actions = _actions(_records(env.hub)[recorded_before:])
    assert actions.count("database-unavailable") == 1, actions
    assert actions.count("database-recovered") == 1, actions
    verify([env.hub.audit_path])


@pytest.mark.slow
def test_tokens_rotated_while_the_database_is_down_are_not_lost(env: OutageEnv) -> None:
    """The EHR rotates the refresh token and the database is gone before the hub stores it:
    the hub keeps the new tokens, stores them when the database is back, and never
    presents the spent refresh token again (which would make an EHR revoke the grant)."""
    env.ehr.expires_in = 2  # the token is due for a refresh after a second
    name, token = _sign_in(env, "rotated")
    spent = env.hub.auth_state(name)["refresh_token"]
    answer = _rotate_while_down(env, env.hub, name, token)
    rotated_access, rotated_refresh = env.ehr.issued[-2:]
    assert spent != rotated_refresh
    try:
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 200:  # the new, valid token: it is the user's now
            assert answer.json()["access_token"] == rotated_access
        still_down = _token_api(env.hub, token)
        assert still_down.status_code == 503 and still_down.headers["Retry-After"]
    finally:
        env.postgres.start()
    after = _until_ok(env.hub, token)
    assert after.status_code == 200, after.text
    assert after.json()["access_token"] == rotated_access
    deadline = time.monotonic() + 60
    while env.hub.auth_state(name).get("refresh_token") != rotated_refresh:
        assert time.monotonic() < deadline, "the rotated refresh token was never stored"
        time.sleep(0.2)
    # the next refresh presents the rotated refresh token, never the spent one
    rejected = hashlib.sha256(rotated_access.encode()).hexdigest()
    forced = _token_api(env.hub, token, rejected=rejected)
    assert forced.status_code == 200, forced.text
    presented = [f["refresh_token"] for f in env.ehr.received if f.get("refresh_token")]
    assert presented[-1] == rotated_refresh
    assert len(presented) == len(set(presented)), "a spent refresh token was presented again"
    verify([env.hub.audit_path])


@pytest.mark.slow
@pytest.mark.skipif(
    selected_database() != "postgresql",
    reason="two hub starts: run once, in the PostgreSQL pass of make test (this module's hubs "
    "are on PostgreSQL in both passes)",
)
def test_a_hub_killed_holding_unsaved_tokens_takes_them_back_when_it_starts(
    env: OutageEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGKILL while rotated tokens wait for the database: they were written (encrypted) to
    the hub's folder, and the next run stores and uses them; the spent refresh token is
    never presented, so the user's grant lives on."""
    work = tmp_path_factory.mktemp("killed")
    database = new_database(env.postgres)
    options = {"http_timeout": 30.0, "unsaved_tokens_dir": str(work / "unsaved"), **ONE_BY_ONE}
    issuers = {
        env.ehr.basic_iss: {
            "client_id": env.ehr.client_id,
            "client_auth": "client_secret_basic",
            "client_secret": env.ehr.client_secret,
        }
    }
    # the next run finds the proxy the killed hub left running (and replaces it)
    proxy = f"c.ConfigurableHTTPProxy.pid_file = {str(work / 'proxy.pid')!r}\n"
    with run_hub(
        work / "run-1", issuers, authenticator=options, database=database, extra=proxy
    ) as hub:
        env.ehr.expires_in = 2
        name, token = _sign_in(env, "killed", hub)
        try:
            _rotate_while_down(env, hub, name, token)
            hub.wait_for_log("kept in memory until it does")
            rotated_access, rotated_refresh = env.ehr.issued[-2:]
            (spilled,) = (work / "unsaved").iterdir()
            assert rotated_refresh.encode() not in spilled.read_bytes()
            hub.process.kill()  # SIGKILL: no shutdown code runs
            hub.process.wait(timeout=30)
        finally:
            env.postgres.start()
    with run_hub(
        work / "run-2",
        issuers,
        port=hub.port,
        authenticator=options,
        database=database,
        crypt_key=hub.crypt_key,
        extra=proxy,
    ) as again:
        after = _until_ok(again, token)
        assert after.json()["access_token"] == rotated_access
        deadline = time.monotonic() + 60
        while again.auth_state(name).get("refresh_token") != rotated_refresh:
            assert time.monotonic() < deadline, "the rotated refresh token was never stored"
            time.sleep(0.2)
        assert not list((work / "unsaved").iterdir())
        presented = [f["refresh_token"] for f in env.ehr.received if f.get("refresh_token")]
        assert len(presented) == len(set(presented)), "a spent refresh token was presented again"
