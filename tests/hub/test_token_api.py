"""The token API and refresh: a real sandbox issuing short-lived tokens, a real hub.

Access tokens live 6 s here, so the hub's leeway (capped at half the lifetime)
is 3 s: a test that waits for it crosses it by a comfortable margin, and no
assertion is about how long anything took.

Forced refresh (a notebook reports its token refused, by SHA-256) runs against
the package's hub and sandboxes, whose tokens live an hour: whatever refresh
happens there was forced, none is due.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from hub_process import Browser, Hub, ehr_launch, patient_ids, run_hub
from leak_scan import saw
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.notebook import HubTokenProvider, ReauthenticationRequired, connect

from .conftest import SmartEnv, sandbox_client

LIFETIME = 6


@dataclass
class RefreshEnv:
    hub: Hub
    sandbox: SandboxProcess


@pytest.fixture(scope="module")
def refresh_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefreshEnv]:
    work = tmp_path_factory.mktemp("refresh-env")
    port = free_port()
    client = sandbox_client("hub-refresh", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(
        work / "sandbox", [client], extra_args=["--access-token-lifetime", str(LIFETIME)]
    ) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-refresh"}}
        # refresh_user runs on (almost) every authenticated request, as it would after
        # JupyterHub's default 300 s on a real deployment
        extra = "c.Authenticator.auth_refresh_age = 1"
        with run_hub(work / "hub", issuers, port=port, extra=extra) as hub:
            yield RefreshEnv(hub, sandbox)


def _login(env: RefreshEnv, patient_index: int = 0) -> tuple[str, str]:
    """Log a user in through an EHR launch; (username, their API token)."""
    with Browser() as browser:
        answer = ehr_launch(browser, env.sandbox, env.hub, patient_ids(env.sandbox)[patient_index])
        assert answer.status_code == 302, answer.text[:1000]
    with env.hub.api(env.hub.admin_token) as api:
        names = [u["name"] for u in api.get("/users").json() if "@" in u["name"]]
    return names[0], env.hub.user_token(names[0])


def _token(hub: Hub, api_token: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"token {api_token}"} if api_token else {}
    return httpx.get(f"{hub.url}/hub/api/smart/token", headers=headers, params=params, timeout=30)


def _wait_until_refresh_due(expires_at: float) -> None:
    time.sleep(max(0.0, expires_at - LIFETIME / 2 - time.time()) + 0.5)


def _refresh_count(hub: Hub) -> int:
    return len(re.findall(r"Refreshed the SMART access token", hub.log_text()))


def test_no_token_is_401(refresh_env: RefreshEnv) -> None:
    response = _token(refresh_env.hub, None)
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_required"


def test_bad_token_is_401(refresh_env: RefreshEnv) -> None:
    assert _token(refresh_env.hub, "not-a-token-" + "x" * 20).status_code == 401


def test_service_token_is_403(refresh_env: RefreshEnv) -> None:
    response = _token(refresh_env.hub, refresh_env.hub.admin_token)
    assert response.status_code == 403


def test_another_users_token_is_403(refresh_env: RefreshEnv) -> None:
    name, token = _login(refresh_env)
    with refresh_env.hub.api(refresh_env.hub.admin_token) as api:
        api.post("/users/someone-else")
    response = _token(refresh_env.hub, token, user="someone-else")
    assert response.status_code == 403
    assert _token(refresh_env.hub, token, user=name).status_code == 200


def test_user_without_smart_login_needs_reauthentication(refresh_env: RefreshEnv) -> None:
    hub = refresh_env.hub
    with hub.api(hub.admin_token) as api:
        api.post("/users/never-signed-in")
    response = _token(hub, hub.user_token("never-signed-in"))
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "reauthentication_required"
    assert body["login_url"] == f"{hub.url}/hub/oauth_login"


def test_login_url_is_a_path_on_the_hubs_internal_address(refresh_env: RefreshEnv) -> None:
    """A notebook calls the hub's internal API URL: no host the user could not open."""
    hub = refresh_env.hub
    with hub.api(hub.admin_token) as api:
        api.post("/users/internal-caller")
    hub_port = json.loads((hub.workdir / "settings.json").read_text())["hub_port"]
    response = httpx.get(
        f"http://127.0.0.1:{hub_port}/hub/api/smart/token",
        headers={"Authorization": f"token {hub.user_token('internal-caller')}"},
    )
    assert response.status_code == 401
    assert response.json()["login_url"] == "/hub/oauth_login"


def test_notebook_keeps_the_sign_in_path_off_the_hubs_internal_address(
    refresh_env: RefreshEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel talks to the hub at its internal address; the link it shows is the path
    (resolved by the notebook page), or the public hub URL when JupyterHub gives one."""
    hub = refresh_env.hub
    with hub.api(hub.admin_token) as api:
        api.post("/users/internal-kernel")
    hub_port = json.loads((hub.workdir / "settings.json").read_text())["hub_port"]
    internal = f"http://127.0.0.1:{hub_port}/hub/api/smart/token"
    token = hub.user_token("internal-kernel")
    monkeypatch.delenv("JUPYTERHUB_PUBLIC_HUB_URL", raising=False)
    with pytest.raises(ReauthenticationRequired) as raised:
        HubTokenProvider(internal, token).get()
    assert raised.value.login_url == "/hub/oauth_login"
    assert f":{hub_port}" not in str(raised.value)
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_HUB_URL", "https://hub.example.org/hub/")
    with pytest.raises(ReauthenticationRequired) as raised:
        HubTokenProvider(internal, token).get()
    assert raised.value.login_url == "https://hub.example.org/hub/oauth_login"


def test_token_api_refreshes_when_due_and_rotates(refresh_env: RefreshEnv) -> None:
    hub, sandbox = refresh_env.hub, refresh_env.sandbox
    name, token = _login(refresh_env)
    first = _token(hub, token).json()
    before = hub.auth_state(name)["refresh_token"]
    _wait_until_refresh_due(first["expires_at"])
    second = _token(hub, token).json()
    assert second["access_token"] != first["access_token"]
    assert second["expires_at"] > first["expires_at"]
    after = hub.auth_state(name)
    assert after["refresh_token"] and after["access_token"] == second["access_token"]
    assert after["refresh_token"] != before  # the sandbox rotates; the hub kept the new one
    fhir = httpx.get(
        f"{sandbox.iss}/Patient/{second['patient']}",
        headers={"Authorization": f"Bearer {second['access_token']}"},
    )
    assert fhir.status_code == 200


def test_many_concurrent_callers_cause_one_refresh(refresh_env: RefreshEnv) -> None:
    hub = refresh_env.hub
    _name, token = _login(refresh_env)
    first = _token(hub, token).json()
    _wait_until_refresh_due(first["expires_at"])
    count = _refresh_count(hub)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {token}"}, timeout=60
        ) as client:
            return await asyncio.gather(
                *(client.get(f"{hub.url}/hub/api/smart/token") for _ in range(50))
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert _refresh_count(hub) == count + 1


def test_refused_refresh_means_sign_in_again(refresh_env: RefreshEnv) -> None:
    hub, sandbox = refresh_env.hub, refresh_env.sandbox
    name, token = _login(refresh_env)
    state = hub.auth_state(name)
    revoked = httpx.post(
        f"{sandbox.origin}/auth/revoke",
        data={"token": state["refresh_token"], "client_id": "hub-refresh"},
    )
    assert revoked.status_code == 200, revoked.text
    _wait_until_refresh_due(state["expires_at"])
    response = _token(hub, token)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "reauthentication_required"
    assert response.json()["login_url"].endswith("/hub/oauth_login")
    assert "invalid_grant" in hub.log_text()


def test_browser_session_ends_when_the_ehr_refuses_the_refresh(refresh_env: RefreshEnv) -> None:
    """refresh_user: invalid_grant means sign in again (JupyterHub sends the browser to login)."""
    hub, sandbox = refresh_env.hub, refresh_env.sandbox
    with Browser() as browser:
        ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
        with hub.api(hub.admin_token) as api:
            name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
        state = hub.auth_state(name)
        time.sleep(1.1)  # past auth_refresh_age, token not yet due: refresh_user keeps the session
        assert browser.get(f"{hub.url}/hub/home").status_code == 200
        httpx.post(
            f"{sandbox.origin}/auth/revoke",
            data={"token": state["refresh_token"], "client_id": "hub-refresh"},
        ).raise_for_status()
        _wait_until_refresh_due(state["expires_at"])
        home = browser.get(f"{hub.url}/hub/home")
        assert home.status_code == 302 and "/hub/login" in home.headers["location"]


def test_ehr_outage_keeps_the_user_signed_in(refresh_env: RefreshEnv) -> None:
    """Last in the module: it stops the sandbox."""
    hub, sandbox = refresh_env.hub, refresh_env.sandbox
    name, token = _login(refresh_env)
    state = hub.auth_state(name)
    sandbox.stop()
    _wait_until_refresh_due(state["expires_at"])
    response = _token(hub, token)  # refresh fails: the still-valid token is handed out
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == state["access_token"]
    # ...but never once the FHIR server refused it: 503, then 429 (the EHR is not asked again)
    refused = _token(hub, token, rejected=_sha256(state["access_token"]))
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "ehr_unavailable"
    again = _token(hub, token, rejected=_sha256(state["access_token"]))
    assert again.status_code == 429 and "did not answer" in again.json()["message"]
    time.sleep(max(0.0, state["expires_at"] - time.time()) + 0.5)
    expired = _token(hub, token)
    assert expired.status_code == 503 and expired.json()["error"] == "ehr_unavailable"
    # still the same user, still signed in, tokens kept for when the EHR is back
    with hub.api(token) as api:
        assert api.get("/user").json()["name"] == name
    assert hub.auth_state(name)["refresh_token"] == state["refresh_token"]
    assert "keeping the session" in hub.log_text()


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_requests(sandbox: SandboxProcess) -> int:
    """Token requests (code exchanges and refreshes) the EHR answered."""
    return len(re.findall(r"POST /auth/token 200", sandbox.log_text()))


def _audit_events(hub: Hub, action: str, name: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in hub.audit_path.read_text().splitlines() if line]
    return [
        e
        for e in events
        if e.get("subtype", [{}])[0].get("code") == action and name in json.dumps(e["agent"])
    ]


def _smart_login(env: SmartEnv, sandbox: SandboxProcess) -> tuple[str, str, dict[str, object]]:
    """EHR launch at ``sandbox`` (the package's hub); (username, API token, first token body)."""
    hub = env.hub
    with Browser() as browser:
        answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[1])
        assert answer.status_code == 302, answer.text[:1000]
    with hub.api(hub.admin_token) as api:
        names = [u["name"] for u in api.get("/users").json()]
    name = next(n for n in names if n.endswith(f"-{sandbox.port}-fhir"))
    token = hub.user_token(name)
    first = _token(hub, token)
    assert first.status_code == 200, first.text
    return name, token, first.json()


def test_a_deleted_or_expired_api_token_is_refused_at_once(smart_env: SmartEnv) -> None:
    """The hub keeps API tokens it found for a while (no lookup per call): a token deleted
    through the REST API, or past its expiry, is refused at its next call all the same; one
    deleted by another process writing the hub's database, within seconds."""
    hub = smart_env.hub
    name, _, _ = _smart_login(smart_env, smart_env.public)
    with hub.api(hub.admin_token) as api:
        deleted = api.post(f"/users/{name}/tokens", json={"note": "deleted"}).json()
        elsewhere = api.post(f"/users/{name}/tokens", json={"note": "by SQL"}).json()
        expiring = api.post(f"/users/{name}/tokens", json={"note": "short", "expires_in": 2}).json()
    for made in (deleted, elsewhere, expiring):
        saw(made["token"], kind="hub API token")
        assert _token(hub, made["token"]).status_code == 200  # found, and now kept
    with hub.api(hub.admin_token) as api:
        api.delete(f"/users/{name}/tokens/{deleted['id']}").raise_for_status()
    assert _token(hub, deleted["token"]).status_code == 401
    engine = sqlalchemy.create_engine(hub.database.url)  # not the hub's own session
    try:
        with engine.begin() as connection:
            gone = connection.execute(
                sqlalchemy.text("DELETE FROM api_tokens WHERE id = :id"),
                {"id": int(elsewhere["id"].removeprefix("a"))},
            )
            assert gone.rowcount == 1
    finally:
        engine.dispose()
    deadline = time.monotonic() + 25  # the hub keeps a token it found for 10 s
    while (late := _token(hub, elsewhere["token"])).status_code == 200:
        assert time.monotonic() < deadline, "a token deleted in the database still works"
        time.sleep(0.5)
    assert late.status_code == 401, late.text
    time.sleep(3)  # past the second token's expiry
    assert _token(hub, expiring["token"]).status_code == 401


def test_spawner_gets_the_token_api_url_and_no_token(smart_env: SmartEnv) -> None:
    """One real single-user server: its environment, and its own API token at the token API."""
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
    with hub.api(hub.admin_token) as api:
        name = next(
            u["name"]
            for u in api.get("/users").json()
            if u["name"].endswith(f"-{sandbox.port}-fhir")
        )
        state = hub.auth_state(name)
        started = api.post(f"/users/{name}/server")
        assert started.status_code in (201, 202), started.text
        deadline = time.monotonic() + 120
        while True:
            model = api.get(f"/users/{name}").json()
            server = model["servers"].get("")
            if server and server.get("ready"):
                break
            assert time.monotonic() < deadline, model
            time.sleep(0.5)
        pid = server["state"]["pid"]
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
            env = dict(line.split("=", 1) for line in raw.split("\0") if "=" in line)
            assert env["SMART_TOKEN_API_URL"].endswith("/hub/api/smart/token")
            for secret in (state["access_token"], state["refresh_token"]):
                assert secret not in raw
            response = httpx.get(
                env["SMART_TOKEN_API_URL"],
                headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["patient"] == state["patient"]
        finally:
            api.delete(f"/users/{name}/server")


def test_new_launch_for_another_patient_is_served_at_once(smart_env: SmartEnv) -> None:
    """The hub reuses the decrypted auth_state between calls: a new launch must replace it."""
    hub, sandbox = smart_env.hub, smart_env.public
    name, token, first = _smart_login(smart_env, sandbox)
    assert _token(hub, token).json()["patient"] == first["patient"]  # served from the cache
    other = next(p for p in patient_ids(sandbox) if p != first["patient"])
    with Browser() as browser:
        assert ehr_launch(browser, sandbox, hub, other).status_code == 302
    body = _token(hub, token).json()
    assert body["patient"] == other and body["access_token"] != first["access_token"]
    assert hub.auth_state(name)["patient"] == other


def test_malformed_rejected_value_is_400(smart_env: SmartEnv) -> None:
    hub = smart_env.hub
    _name, token, first = _smart_login(smart_env, smart_env.public)
    access_token = str(first["access_token"])
    for bad in (
        "eyJ-looks-like-a-token-" + "x" * 40,  # a client sending a token, not its hash
        "abc",
        "g" * 64,
        _sha256(access_token) + "0",
        "",
    ):
        response = _token(hub, token, rejected=bad)
        assert response.status_code == 400, (bad[:8], response.text)
        body = response.json()
        assert body["error"] == "invalid_request"
        assert "SHA-256" in body["message"] and "64 hex digits" in body["message"]
        assert access_token not in response.text
    twice = httpx.get(
        f"{hub.url}/hub/api/smart/token",
        params=[("rejected", _sha256(access_token)), ("rejected", _sha256(access_token))],
        headers={"Authorization": f"token {token}"},
    )
    assert twice.status_code == 400 and "once" in twice.json()["message"]
    assert "sent a malformed 'rejected' parameter" in hub.log_text()
    # nothing was refreshed: the same token is still the current one
    assert _token(hub, token).json()["access_token"] == access_token


def test_flood_of_rejections_is_one_refresh_then_rate_limited(smart_env: SmartEnv) -> None:
    """100 kernels report the same refused token: one refresh; the old hash: no refresh;
    the new token reported too: 429 without asking the EHR."""
    hub, sandbox = smart_env.hub, smart_env.public
    name, token, first = _smart_login(smart_env, sandbox)
    old = str(first["access_token"])
    requests_before = _token_requests(sandbox)
    log_before = len(hub.log_text())  # the package's hub: earlier tests' refreshes are in its log

    async def flood(fingerprint: str, count: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {token}"}, timeout=60
        ) as client:
            return await asyncio.gather(
                *(
                    client.get(f"{hub.url}/hub/api/smart/token", params={"rejected": fingerprint})
                    for _ in range(count)
                )
            )

    responses = asyncio.run(flood(_sha256(old), 100))
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    fresh = {r.json()["access_token"] for r in responses}
    assert len(fresh) == 1 and old not in fresh
    new = fresh.pop()
    saw(new, kind="access token")
    assert _token_requests(sandbox) == requests_before + 1
    forced = re.findall(
        rf"Refreshed the SMART access token of {re.escape(name)} \(forced",
        hub.log_text()[log_before:],
    )
    assert len(forced) == 1
    refreshed = _audit_events(hub, "token-refreshed", name)
    assert refreshed and "forced" in str(refreshed[-1].get("outcomeDesc"))
    # the new token works at the FHIR server; the old hash now just gets it
    fhir = httpx.get(
        f"{sandbox.iss}/Patient/{first['patient']}", headers={"Authorization": f"Bearer {new}"}
    )
    assert fhir.status_code == 200
    again = _token(hub, token, rejected=_sha256(old))
    assert again.status_code == 200 and again.json()["access_token"] == new
    # the FHIR server "refuses" the new token too: within forced_refresh_interval, 429
    limited = asyncio.run(flood(_sha256(new), 20))
    assert all(r.status_code == 429 for r in limited), {r.status_code for r in limited}
    body = limited[0].json()
    assert body["error"] == "refresh_rate_limited" and body["retry_after"] >= 1
    assert int(limited[0].headers["Retry-After"]) == body["retry_after"]
    assert _token_requests(sandbox) == requests_before + 1
    # without a report the (still valid) token is handed out as usual
    assert _token(hub, token).json()["access_token"] == new


def _withdraw_consent(sandbox: SandboxProcess, fhir_user: str) -> None:
    """The EHR's sessions page: revoke every grant the practitioner approved."""
    with httpx.Client(base_url=sandbox.origin, timeout=30) as ehr:
        page = ehr.get("/ehr/sessions").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf, page[:1000]
        answer = ehr.post("/ehr/revoke", data={"csrf_token": csrf.group(1), "user": fhir_user})
        assert answer.status_code == 303, answer.text[:1000]


def test_revoked_grant_means_reauthentication_at_the_next_request(
    smart_env: SmartEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consent withdrawn in the EHR: the notebook's next read raises ReauthenticationRequired,
    although the access token would be valid for another hour."""
    hub, sandbox = smart_env.hub, smart_env.jwt
    name, token, first = _smart_login(smart_env, sandbox)
    state = hub.auth_state(name)
    assert float(state["expires_at"]) - time.time() > 600  # no refresh would be due for long
    monkeypatch.setenv("JUPYTERHUB_API_URL", f"{hub.url}/hub/api")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    provider = HubTokenProvider(f"{hub.url}/hub/api/smart/token", token)
    with connect(token_provider=provider, show_banner=False) as fhir:
        assert fhir.read("Patient", str(first["patient"]))["id"] == first["patient"]
        _withdraw_consent(sandbox, str(state["fhirUser"]))
        with pytest.raises(ReauthenticationRequired) as raised:
            fhir.read("Patient", str(first["patient"]))
        assert raised.value.login_url == f"{hub.url}/hub/oauth_login"
        # and again (the hub remembers; it does not ask the EHR once more)
        requests = _token_requests(sandbox)
        with pytest.raises(ReauthenticationRequired):
            fhir.read("Patient", str(first["patient"]))
        assert _token_requests(sandbox) == requests
    # the dead tokens are gone: every other kernel of the user hears it on its next call
    plain = _token(hub, token)
    assert plain.status_code == 401 and plain.json()["error"] == "reauthentication_required"
    left = hub.auth_state(name)
    assert not left.get("access_token") and not left.get("refresh_token")
    assert left["patient"] == first["patient"]  # the context stays for the sign-in page
    assert re.search(rf"Refresh for {re.escape(name)} refused by the EHR \(forced", hub.log_text())
    refused = _audit_events(hub, "reauthentication-required", name)
    assert any("forced" in str(e.get("outcomeDesc")) for e in refused)
