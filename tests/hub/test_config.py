"""Start-up checks, iframe embedding, logout and OAuthenticator's usual options, each
against a real JupyterHub process."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, location, patient_ids, query, run_hub

from .conftest import EvilEnv, SmartEnv
from .evil_ehr import EvilEHR


def _exits_with(hub: Hub, words: str) -> str:
    deadline = time.monotonic() + 60
    while hub.process.poll() is None:
        assert time.monotonic() < deadline, hub.log_text()[-3000:]
        time.sleep(0.2)
    assert hub.process.returncode != 0
    log = hub.log_text()
    assert words in log, log[-3000:]
    return log


def test_hub_refuses_to_start_without_crypt_key(tmp_path: Path, smart_env: SmartEnv) -> None:
    issuers = {smart_env.public.iss: {"client_id": "hub-public"}}
    with run_hub(tmp_path, issuers, crypt_key="", expect_failure=True) as hub:
        _exits_with(hub, "JUPYTERHUB_CRYPT_KEY")


@pytest.mark.parametrize(
    ("issuers", "options", "words"),
    [
        ({"https://ehr.example/fhir": {"client_id": "x", "colour": "red"}}, {}, "unknown key"),
        ({"http://ehr.example/fhir": {"client_id": "x"}}, {}, "plain http"),
        (
            {"https://ehr.example/fhir": {"client_id": "x"}},
            {"default_issuer": "https://other.example/fhir"},
            "default_issuer",
        ),
        (
            {"https://ehr.example/fhir": {"client_id": "x"}},
            {"frame_ancestors": ["*"]},
            "frame_ancestors",
        ),
        (
            {
                "https://ehr.example/fhir": {
                    "client_id": "x",
                    "client_auth": "private_key_jwt",
                    "private_key_path": "/nonexistent/key.pem",
                }
            },
            {},
            "https://ehr.example/fhir",
        ),
        (
            {"https://ehr.example/fhir": {"client_id": "x"}},
            {"ehr_ca_bundle": "/nonexistent/internal-ca.pem"},
            "SMARTAuthenticator.ehr_ca_bundle: '/nonexistent/internal-ca.pem' does not exist",
        ),
        (
            {"https://ehr.example/fhir": {"client_id": "x"}},
            {"inactivity_timeout": -5},
            "inactivity_timeout must be 0 (off) or positive",
        ),
        (
            {
                "https://ehr.example/fhir/r4": {"client_id": "x"},
                "https://ehr.example/fhir-r4": {"client_id": "y"},
            },
            {},
            "default usernames of these EHRs' users would be the same",
        ),
    ],
)
@pytest.mark.one_pass  # the authenticator's own checks (a refused start-up runs in both passes)
def test_bad_configuration_stops_the_hub_with_a_clear_message(
    tmp_path: Path, issuers: dict, options: dict, words: str
) -> None:
    with run_hub(tmp_path, issuers, authenticator=options, expect_failure=True) as hub:
        _exits_with(hub, words)


def test_default_csp_forbids_framing(smart_env: SmartEnv) -> None:
    response = httpx.get(smart_env.hub.login_url)
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_frame_ancestors_allow_only_the_ehr(tmp_path: Path, smart_env: SmartEnv) -> None:
    issuers = {smart_env.public.iss: {"client_id": "hub-public"}}
    options = {"frame_ancestors": ["https://ehr.example.org", "https://epic.example.org:8443/"]}
    with run_hub(tmp_path, issuers, authenticator=options) as hub:
        response = httpx.get(hub.login_url, params={"iss": smart_env.public.iss})
        csp = response.headers["content-security-policy"]
        assert csp == "frame-ancestors 'self' https://ehr.example.org https://epic.example.org:8443"
        cookie = response.headers["set-cookie"]
        assert "SameSite=None" in cookie and "Secure" in cookie and "HttpOnly" in cookie
        # every hub page carries the same policy (error pages and JupyterHub's own), and
        # every cookie the hub sets can live inside the EHR's iframe
        refused = httpx.get(hub.login_url, params={"iss": "https://unknown.example/fhir"})
        assert refused.status_code == 400
        login_page = httpx.get(f"{hub.url}/hub/login")
        for page in (refused, login_page):
            assert page.headers["content-security-policy"] == csp
        cookies = [c for r in (response, login_page) for c in r.headers.get_list("set-cookie")]
        assert len(cookies) >= 2, cookies  # the binding cookie and JupyterHub's _xsrf
        for cookie in cookies:
            assert "SameSite=None" in cookie and "Secure" in cookie, cookie


def test_logout_revokes_the_refresh_token_and_drops_tokens(smart_env: SmartEnv) -> None:
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
        assert browser.get(f"{hub.url}/hub/home").status_code == 200
        assert "jupyterhub-smart-login" in browser.client.cookies  # the launch's binding
        out = browser.logout(hub.url)
        assert out.status_code in (200, 302)
        # the hub's cookies are cleared (expired), the binding cookie with them
        names = {cookie.name for cookie in browser.client.cookies.jar}
        assert not names & {"jupyterhub-smart-login", "jupyterhub-hub-login"}, names
        home = browser.get(f"{hub.url}/hub/home")
        assert home.status_code == 302  # signed out: back to the login page
    after = hub.auth_state(name)
    assert "refresh_token" not in after and "access_token" not in after
    refused = httpx.post(
        f"{sandbox.origin}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": state["refresh_token"],
            "client_id": "hub-public",
        },
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    token = hub.user_token(name)
    response = httpx.get(
        f"{hub.url}/hub/api/smart/token", headers={"Authorization": f"token {token}"}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "reauthentication_required"


def test_logout_revokes_with_private_key_jwt_and_the_record_says_so(smart_env: SmartEnv) -> None:
    """The revocation's client assertion is addressed to the token endpoint, as the EHR
    expects; the logout record names what became of the grant."""
    hub, sandbox = smart_env.hub, smart_env.jwt
    with Browser() as browser:
        ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
        with hub.api(hub.admin_token) as api:
            name = next(
                u["name"]
                for u in api.get("/users").json()
                if u["name"].endswith(f"-{sandbox.port}-fhir")
            )
        assert "refresh_token" in hub.auth_state(name)
        assert browser.logout(hub.url).status_code in (200, 302)
    records = [json.loads(line) for line in hub.audit_path.read_text().splitlines()]
    mine = [r for r in records if name in json.dumps(r)]
    actions = [r.get("action_name") or json.dumps(r) for r in mine]
    assert any('"token-revoked"' in json.dumps(r) for r in mine), actions
    assert not any('"token-revocation-failed"' in json.dumps(r) for r in mine)
    logout = [r for r in mine if '"logout"' in json.dumps(r)][-1]
    assert "EHR grant revoked" in json.dumps(logout)
    assert "Could not revoke" not in hub.log_text()


MAPPER_FAILS = """
def username_mapper(issuer, fhir_user, claims):
    held = open({secret_file!r}).read()  # a runtime value, as a token would be
    raise RuntimeError("mapper broke holding " + held)

c.SMARTAuthenticator.username_mapper = username_mapper
"""


def test_unexpected_failure_is_a_500_page_without_code_or_message(
    tmp_path: Path, evil_env: EvilEnv
) -> None:
    evil = evil_env.evil
    marker = "secret-in-exception-" + secrets.token_urlsafe(8)
    code = "evil-code-" + secrets.token_urlsafe(12)
    issuers = {evil.iss: {"client_id": evil.client_id, "client_auth": "public"}}
    secret_file = tmp_path / "held.txt"
    secret_file.write_text(marker)
    extra = MAPPER_FAILS.format(secret_file=str(secret_file))
    with run_hub(tmp_path / "hub", issuers, extra=extra) as hub:
        evil.mode = "good"
        with Browser() as browser:
            response = browser.get(hub.login_url, params={"iss": evil.iss})
            params = query(location(response))
            evil.nonce = params["nonce"]
            answer = browser.get(hub.callback_url, params={"code": code, "state": params["state"]})
        assert answer.status_code == 500
        assert "internal_error" in answer.text and marker not in answer.text
        log = hub.log_text()
        assert "failed unexpectedly (RuntimeError)" in log and "username_mapper" in log
        assert marker not in log and code not in log
        assert hub.alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="a tiny tmpfs that really fills up needs root")
def test_full_audit_disk_refuses_logins_and_tokens_not_the_hub(
    tmp_path: Path, evil_env: EvilEnv
) -> None:
    """Fail closed: access nobody could account for is refused (503), the hub keeps serving."""
    from audit.helpers import fill, tmpfs

    evil = evil_env.evil
    issuers = {evil.iss: {"client_id": evil.client_id, "client_auth": "public"}}

    def login(browser: Browser) -> httpx.Response:
        evil.mode = "good"
        start = browser.get(hub.login_url, params={"iss": evil.iss})
        params = query(location(start))
        evil.nonce = params["nonce"]
        code = "evil-code-" + secrets.token_urlsafe(12)
        return browser.get(hub.callback_url, params={"code": code, "state": params["state"]})

    with tmpfs(tmp_path / "disk", size="256k") as disk:
        options = {"audit_log_path": str(disk / "audit.jsonl")}
        with run_hub(tmp_path / "hub", issuers, authenticator=options) as hub:
            with Browser() as browser:
                assert login(browser).status_code == 302
            with hub.api(hub.admin_token) as api:
                name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
            token = hub.user_token(name)
            api_url = f"{hub.url}/hub/api/smart/token"
            headers = {"Authorization": f"token {token}"}
            assert httpx.get(api_url, headers=headers).status_code == 200
            fill(disk)
            with Browser() as browser:
                refused = login(browser)
            assert refused.status_code == 503 and "audit trail" in refused.text
            response = httpx.get(api_url, headers=headers)
            assert response.status_code == 503
            assert response.json()["error"] == "audit_unavailable"
            assert hub.alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="a tiny tmpfs that really fills up needs root")
def test_full_audit_disk_when_a_refresh_is_due_is_503_and_nothing_is_lost(
    tmp_path: Path, evil_env: EvilEnv
) -> None:
    """The refresh happens and its tokens are stored (the EHR rotated the refresh token),
    but it cannot be recorded: the token API hands nothing out (503, not 500), the hub
    keeps serving, and once the disk has room the held record is written and tokens flow."""
    from audit.helpers import fill, tmpfs, wait_for

    evil = evil_env.evil
    issuers = {evil.iss: {"client_id": evil.client_id, "client_auth": "public"}}
    lifetime = 8  # the hub refreshes in the last half of a token's life
    with tmpfs(tmp_path / "disk", size="256k") as disk:
        audit_path = disk / "audit.jsonl"
        with run_hub(
            tmp_path / "hub", issuers, authenticator={"audit_log_path": str(audit_path)}
        ) as hub:
            evil.mode, evil.expires_in = "good", lifetime
            try:
                with Browser() as browser:
                    start = browser.get(hub.login_url, params={"iss": evil.iss})
                    params = query(location(start))
                    evil.nonce = params["nonce"]
                    code = "evil-code-" + secrets.token_urlsafe(12)
                    answer = browser.get(
                        hub.callback_url, params={"code": code, "state": params["state"]}
                    )
                    assert answer.status_code == 302, answer.text[:2000]
            finally:
                evil.expires_in = 3600
            with hub.api(hub.admin_token) as api:
                name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
            before = hub.auth_state(name)
            api_url = f"{hub.url}/hub/api/smart/token"
            headers = {"Authorization": f"token {hub.user_token(name)}"}
            assert httpx.get(api_url, headers=headers).status_code == 200
            filler = fill(disk)
            # tmpfs keeps the slack of the log's last page: refused launches (events that
            # are held, not refused) use it up until the log reports the disk full
            for n in range(200):
                httpx.get(hub.login_url, params={"iss": f"https://refused-{n}.example/fhir"})
                if "is not writable (ENOSPC" in hub.log_text():
                    break
            time.sleep(max(0.0, before["expires_at"] - lifetime / 2 - time.time()) + 0.5)
            response = httpx.get(api_url, headers=headers)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "audit_unavailable"
            assert "access_token" not in response.json()
            assert "audit trail unavailable, no token" in hub.log_text()  # the refresh's
            after = hub.auth_state(name)  # refreshed and stored, not lost
            assert after["access_token"] != before["access_token"]
            assert after["refresh_token"] != before["refresh_token"]
            assert after["access_token"] not in response.text
            assert hub.alive()
            assert "Traceback" not in hub.log_text() and " 500 GET" not in hub.log_text()

            filler.unlink()  # room again: the held records are written, tokens flow
            wait_for(lambda: "token-refreshed" in audit_path.read_text(), "the held record")
            wait_for(lambda: httpx.get(api_url, headers=headers).status_code == 200, "a token")
            actions = [
                json.loads(line)["subtype"][0]["code"]
                for line in audit_path.read_text().splitlines()
            ]
            assert actions.index("token-refreshed") < len(actions) - 1
            assert actions[-1] == "token-issued"


# ---------------------------------------------------------------- OAuthenticator options

GROUPS_FROM_TENANT = """
c.SMARTAuthenticator.auth_state_groups_key = lambda state: ["tenant-" + str(state.get("tenant"))]
"""


@dataclass
class PolicyEnv:
    hub: Hub
    evil: EvilEHR
    allowed: str  # the one allowed (and admin) user

    @property
    def noid_iss(self) -> str:
        return self.evil.origin + "/noid"


@pytest.fixture(scope="module")
def policy_env(tmp_path_factory: pytest.TempPathFactory, evil_env: EvilEnv) -> Iterator[PolicyEnv]:
    """A hub with the usual OAuthenticator options on: no allow_all, one allowed admin user,
    managed groups, a default issuer for standalone launches, and an issuer asked for no
    openid (so the EHR names nobody)."""
    evil = evil_env.evil
    port = evil.origin.rsplit(":", 1)[1]
    allowed = f"practitioner-evil-1@127.0.0.1-{port}-fhir"
    issuers = {
        evil.iss: {"client_id": evil.client_id, "client_auth": "public"},
        evil.origin + "/noid": {
            "client_id": evil.client_id,
            "client_auth": "public",
            "scope": "launch/patient patient/*.rs",
        },
    }
    options = {
        "allow_all": False,
        "allowed_users": [allowed],
        "admin_users": [allowed],
        "manage_groups": True,
        "default_issuer": evil.iss,
    }
    work = tmp_path_factory.mktemp("policy-env")
    with run_hub(work / "hub", issuers, authenticator=options, extra=GROUPS_FROM_TENANT) as hub:
        yield PolicyEnv(hub, evil, allowed)


def _finish_at_evil(
    env: PolicyEnv, browser: Browser, start: httpx.Response, mode: str, fhir_user: str
) -> httpx.Response:
    """The evil EHR's side of a login the hub started with ``start`` (its 302 to authorize)."""
    assert start.status_code == 302, start.text[:2000]
    params = query(location(start))
    env.evil.mode, env.evil.nonce, env.evil.fhir_user = mode, params.get("nonce"), fhir_user
    try:
        code = "evil-code-" + secrets.token_urlsafe(12)
        return browser.get(env.hub.callback_url, params={"code": code, "state": params["state"]})
    finally:
        env.evil.fhir_user = "Practitioner/evil-1"


def test_standalone_launch_uses_default_issuer_and_options_keep_working(
    policy_env: PolicyEnv,
) -> None:
    """default_issuer, allowed_users, admin_users and manage_groups on a SMART login."""
    hub, evil = policy_env.hub, policy_env.evil
    with Browser() as browser:
        start = browser.get(hub.login_url)  # no iss: the default issuer, no picker page
        authorize = location(start)
        assert authorize.startswith(evil.origin + "/authorize?")
        params = query(authorize)
        assert params["aud"] == evil.iss and "launch" not in params
        answer = _finish_at_evil(policy_env, browser, start, "full_context", "Practitioner/evil-1")
        assert answer.status_code == 302, answer.text[:2000]
    with hub.api(hub.admin_token) as api:
        model = api.get(f"/users/{policy_env.allowed}").json()
    assert model["admin"] is True
    assert model["groups"] == ["tenant-hospital-2"]


def test_user_not_in_allowed_users_gets_a_403_page(policy_env: PolicyEnv) -> None:
    hub = policy_env.hub
    marker = "refused (403 not_allowed)"
    before = hub.log_text().count(marker)
    with Browser() as browser:
        start = browser.get(hub.login_url, params={"iss": policy_env.evil.iss})
        answer = _finish_at_evil(policy_env, browser, start, "good", "Practitioner/evil-2")
    assert answer.status_code == 403 and "not currently authorized to use this hub" in answer.text
    assert hub.log_text().count(marker) == before + 1
    with hub.api(hub.admin_token) as api:
        assert "practitioner-evil-2" not in api.get("/users").text
    audit = hub.audit_path.read_text()
    assert "login-failed" in audit and "allowed/blocked users" in audit
    assert hub.alive()


def test_ehr_that_names_nobody_gets_a_403_page(policy_env: PolicyEnv) -> None:
    """No openid asked, no fhirUser, no sub: the hub cannot make a username."""
    hub = policy_env.hub
    marker = "refused (403 no_user_identity)"
    before = hub.log_text().count(marker)
    with Browser() as browser:
        start = browser.get(hub.login_url, params={"iss": policy_env.noid_iss})
        assert "nonce" not in query(location(start))  # no openid, no nonce
        answer = _finish_at_evil(policy_env, browser, start, "no_identity", "Practitioner/evil-1")
    assert answer.status_code == 403 and "did not say who you are" in answer.text
    assert hub.log_text().count(marker) == before + 1
    assert hub.alive()


def test_hub_without_issuers_says_so_on_the_login_page(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with run_hub(tmp_path_factory.mktemp("no-issuers-env") / "hub", {}) as hub:
        response = httpx.get(hub.login_url)
        assert response.status_code == 503
        assert "not registered with any EHR" in response.text
        assert "refused (503 no_issuers)" in hub.log_text()
        assert hub.alive()
