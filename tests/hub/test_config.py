"""Start-up checks, iframe embedding and logout, each against a real JupyterHub process."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import httpx
import pytest

from .conftest import EvilEnv, SmartEnv
from .harness import Browser, Hub, ehr_launch, location, patient_ids, query, run_hub


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
    ],
)
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
        out = browser.get(f"{hub.url}/hub/logout")
        assert out.status_code in (200, 302)
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
