"""Only tokens holding the SMART scopes get EHR tokens or write audit reports.

Every token here authenticates as the same signed-in user; what differs is who
holds it: the user's own server, a personal token, a token made with narrow
scopes, a JupyterHub service the user signed in to, and another user's shared
server the user opened and authorized. A real hub, a real sandbox EHR, and
JupyterHub's own OAuth authorization page.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hub_process import Browser, Hub, ehr_launch, location, patient_ids, query, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.hub.scopes import AUDIT_SCOPE, TOKEN_SCOPE

from .conftest import sandbox_client

PLAIN_SECRET = secrets.token_hex(16)
TRUSTED_SECRET = secrets.token_hex(16)
CALLBACK = "http://127.0.0.1:9/{name}/oauth_callback"

SERVICES = f"""
c.JupyterHub.services += [
    {{"name": "plain", "api_token": {PLAIN_SECRET!r},
      "oauth_redirect_uri": {CALLBACK.format(name="plain")!r}}},
    {{"name": "trusted", "api_token": {TRUSTED_SECRET!r},
      "oauth_redirect_uri": {CALLBACK.format(name="trusted")!r},
      "oauth_client_allowed_scopes": [{TOKEN_SCOPE!r}]}},
]
c.JupyterHub.load_roles.append({{"name": "user", "scopes": ["self", "access:services"]}})
"""


@dataclass
class ScopeEnv:
    hub: Hub
    sandbox: SandboxProcess
    browser: Browser  # signed in to the hub through an EHR launch
    name: str  # that user


@pytest.fixture(scope="module")
def scope_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopeEnv]:
    work = tmp_path_factory.mktemp("scopes")
    port = free_port()
    client = sandbox_client("hub-public", f"http://127.0.0.1:{port}", type="public")
    with run_sandbox(work / "sandbox", [client]) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-public", "client_auth": "public"}}
        with run_hub(work / "hub", issuers, port=port, extra=SERVICES) as hub, Browser() as browser:
            answer = ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0])
            assert answer.status_code == 302, answer.text[:1000]
            with hub.api(hub.admin_token) as api:
                name = next(u["name"] for u in api.get("/users").json() if "@" in u["name"])
            yield ScopeEnv(hub, sandbox, browser, name)


def _token_api(hub: Hub, token: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url}/hub/api/smart/token", headers={"Authorization": f"token {token}"}, timeout=30
    )


def _audit_api(hub: Hub, token: str) -> httpx.Response:
    event = {"interaction": "read", "resource_type": "Patient", "resource_id": "p", "status": 200}
    return httpx.post(
        f"{hub.url}/hub/api/smart/audit",
        headers={"Authorization": f"token {token}"},
        json={"events": [event]},
        timeout=30,
    )


def _refused_for_scope(response: httpx.Response, scope: str) -> None:
    assert response.status_code == 403, response.text
    assert scope in response.text
    assert "oauth_client_allowed_scopes" in response.text
    assert "access_token" not in response.text


def _oauth_token(
    env: ScopeEnv, client_id: str, secret: str, redirect_uri: str, scope: str | None = None
) -> tuple[str, str]:
    """The user authorizes ``client_id`` on JupyterHub's page; (its token, the page shown)."""
    params = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code"}
    params |= {"state": secrets.token_urlsafe(8)} | ({"scope": scope} if scope else {})
    authorize = f"{env.hub.url}/hub/api/oauth2/authorize"
    page = env.browser.get(authorize, params=params)
    shown = page.text
    if page.status_code == 200:  # the consent page: approve what it lists
        fields = {
            "_xsrf": re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1),  # type: ignore[union-attr]
            "scopes": re.findall(r'type="hidden" name="scopes" value="([^"]+)"', page.text),
        }
        page = env.browser.client.post(
            str(page.url), data=fields, headers={"Referer": str(page.url)}
        )
    assert page.status_code == 302, page.text[:2000]
    code = query(location(page))["code"]
    exchanged = httpx.post(
        f"{env.hub.url}/hub/api/oauth2/token",
        data={
            "client_id": client_id,
            "client_secret": secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
        },
        timeout=30,
    )
    assert exchanged.status_code == 200, exchanged.text
    return str(exchanged.json()["access_token"]), shown


def test_personal_token_gets_the_ehr_token_and_reports(scope_env: ScopeEnv) -> None:
    token = scope_env.hub.user_token(scope_env.name)
    assert _token_api(scope_env.hub, token).status_code == 200
    assert _audit_api(scope_env.hub, token).status_code == 201


def test_token_with_explicit_narrow_scopes_is_refused(scope_env: ScopeEnv) -> None:
    hub, name = scope_env.hub, scope_env.name
    narrow = hub.user_token(name, scopes=[f"read:users!user={name}"])
    _refused_for_scope(_token_api(hub, narrow), TOKEN_SCOPE)
    _refused_for_scope(_audit_api(hub, narrow), AUDIT_SCOPE)
    only_token = hub.user_token(name, scopes=[f"{TOKEN_SCOPE}!user={name}"])
    assert _token_api(hub, only_token).status_code == 200
    _refused_for_scope(_audit_api(hub, only_token), AUDIT_SCOPE)


def test_a_service_the_user_signed_in_to_gets_no_ehr_token(scope_env: ScopeEnv) -> None:
    redirect = CALLBACK.format(name="plain")
    token, _ = _oauth_token(scope_env, "service-plain", PLAIN_SECRET, redirect)
    assert (
        httpx.get(
            f"{scope_env.hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}
        ).json()["name"]
        == scope_env.name
    )  # the token is the user's, as JupyterHub issued it
    _refused_for_scope(_token_api(scope_env.hub, token), TOKEN_SCOPE)
    _refused_for_scope(_audit_api(scope_env.hub, token), AUDIT_SCOPE)
    # asking for the scope gets a client that may not request it no code at all
    params = {"client_id": "service-plain", "redirect_uri": redirect, "response_type": "code"}
    refused = scope_env.browser.get(
        f"{scope_env.hub.url}/hub/api/oauth2/authorize", params={**params, "scope": TOKEN_SCOPE}
    )
    assert refused.status_code == 302 and "code" not in query(location(refused))


def test_a_trusted_service_gets_it_only_with_the_users_consent(scope_env: ScopeEnv) -> None:
    """An admin allowed the service to ask (oauth_client_allowed_scopes); the user must agree."""
    redirect = CALLBACK.format(name="trusted")
    token, page = _oauth_token(scope_env, "service-trusted", TRUSTED_SECRET, redirect, TOKEN_SCOPE)
    assert "Authorize" in page and "EHR access token" in page  # what the user agreed to
    assert _token_api(scope_env.hub, token).status_code == 200


def test_another_users_shared_server_gets_no_ehr_token(scope_env: ScopeEnv) -> None:
    """The owner of a server the victim opened and authorized holds the victim's token."""
    hub = scope_env.hub
    owner = "server-owner"
    with hub.api(hub.admin_token) as api:
        api.post(f"/users/{owner}")
        assert api.post(f"/users/{owner}/server").status_code in (201, 202)
        deadline = time.monotonic() + 120
        while not (api.get(f"/users/{owner}").json()["servers"].get("") or {}).get("ready"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        try:
            pid = api.get(f"/users/{owner}").json()["servers"][""]["state"]["pid"]
            raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
            env = dict(line.split("=", 1) for line in raw.split("\0") if "=" in line)
            shared = api.post(f"/shares/{owner}/", json={"user": scope_env.name})
            assert shared.status_code in (200, 201), shared.text
            token, page = _oauth_token(
                scope_env,
                env["JUPYTERHUB_CLIENT_ID"],
                env["JUPYTERHUB_API_TOKEN"],
                env["JUPYTERHUB_OAUTH_CALLBACK_URL"],
            )
            assert "Authorize" in page  # the victim saw and approved JupyterHub's page
            _refused_for_scope(_token_api(hub, token), TOKEN_SCOPE)
            _refused_for_scope(_audit_api(hub, token), AUDIT_SCOPE)
        finally:
            api.delete(f"/users/{owner}/server")


def test_deleting_a_user_revokes_their_ehr_grant_and_records_it(scope_env: ScopeEnv) -> None:
    hub, sandbox, name = scope_env.hub, scope_env.sandbox, scope_env.name
    refresh_token = hub.auth_state(name)["refresh_token"]
    token = hub.user_token(name)
    with hub.api(hub.admin_token) as api:
        assert api.delete(f"/users/{name}").status_code == 204
    assert _token_api(hub, token).status_code == 401  # JupyterHub dropped the user's tokens
    refused = httpx.post(
        f"{sandbox.origin}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": "hub-public",
        },
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    records = [line for line in hub.audit_path.read_text().splitlines() if name in line]
    withdrawn = [r for r in records if '"access-withdrawn"' in r]
    assert len(withdrawn) == 1 and "deleted" in withdrawn[0] and "EHR grant revoked" in withdrawn[0]
    assert refresh_token not in hub.audit_path.read_text()
    # the same person signs in again: a new user, a new grant (the other tests keep theirs)
    answer = ehr_launch(scope_env.browser, sandbox, hub, patient_ids(sandbox)[0])
    assert answer.status_code == 302
    assert _token_api(hub, hub.user_token(name)).status_code == 200
