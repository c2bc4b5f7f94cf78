"""The refresh token never leaves the hub: JupyterHub's REST API shows only its ciphertext.

Real hubs and sandboxes. The sealed value is opened here independently, from
JUPYTERHUB_CRYPT_KEY with the documented derivation (harness.open_sealed), to
check what the hub stored; key rotation and auth_states stored before sealing
keep refreshing.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken
from hub_process import Browser, Hub, ehr_launch, open_sealed, patient_ids, run_hub
from leak_scan import saw
from sandbox_process import free_port, run_sandbox

from .conftest import SmartEnv, sandbox_client

LIFETIME = 6  # seconds an access token lives at this test's sandbox


def _signed_in(hub: Hub, sandbox_port: int) -> str:
    with hub.api(hub.admin_token) as api:
        return next(
            u["name"]
            for u in api.get("/users").json()
            if u["name"].endswith(f"-{sandbox_port}-fhir")
        )


def test_rest_api_shows_only_ciphertext_of_the_refresh_token(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        assert ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[2]).status_code == 302
    name = _signed_in(hub, sandbox.port)
    shown = hub.rest_auth_state(name)  # what any admin:auth_state holder reads
    refresh_token = hub.auth_state(name)["refresh_token"]
    assert refresh_token and "refresh_token" not in shown
    assert refresh_token not in json.dumps(shown)
    assert shown["sealed_refresh_token"].startswith("gAAAA")  # a Fernet token
    with pytest.raises(InvalidToken):  # JUPYTERHUB_CRYPT_KEY itself does not open it
        Fernet(base64.urlsafe_b64encode(bytes.fromhex(hub.crypt_key))).decrypt(
            shown["sealed_refresh_token"].encode()
        )


def _refreshed(hub: Hub, api_token: str, previous: str) -> dict[str, object]:
    """Wait until a refresh is due, then one token API call: its body (a new access token)."""
    time.sleep(LIFETIME / 2 + 1)
    answer = httpx.get(
        f"{hub.url}/hub/api/smart/token",
        headers={"Authorization": f"token {api_token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = dict(answer.json())
    assert body["access_token"] != previous
    saw(str(body["access_token"]), kind="access token")
    return body


def test_key_rotation_and_plaintext_auth_state_keep_refreshing(tmp_path: Path) -> None:
    port = free_port()
    client = sandbox_client("hub-seal", f"http://127.0.0.1:{port}", type="public")
    old_key, new_key = secrets.token_hex(32), secrets.token_hex(32)
    with run_sandbox(
        tmp_path / "sandbox", [client], extra_args=["--access-token-lifetime", str(LIFETIME)]
    ) as sandbox:
        issuers = {sandbox.iss: {"client_id": "hub-seal"}}
        with run_hub(tmp_path / "hub", issuers, port=port, crypt_key=old_key) as hub:
            with Browser() as browser:
                assert ehr_launch(browser, sandbox, hub, patient_ids(sandbox)[0]).status_code == 302
            name = _signed_in(hub, sandbox.port)
            api_token = hub.user_token(name)
            first = hub.auth_state(name)

        # rotation: the new key first, the old one kept to open what it sealed
        with run_hub(tmp_path / "hub", issuers, port=port, crypt_key=f"{new_key};{old_key}") as hub:
            body = _refreshed(hub, api_token, str(first["access_token"]))
            shown = hub.rest_auth_state(name)
            assert "refresh_token" not in shown
            sealed = shown["sealed_refresh_token"]
            assert open_sealed(new_key, sealed)  # sealed again under the new key
            with pytest.raises(InvalidToken):
                open_sealed(old_key, sealed)

            # an auth_state stored before sealing existed: a plaintext refresh token
            legacy = hub.auth_state(name)
            with hub.api(hub.admin_token) as api:
                api.patch(f"/users/{name}", json={"auth_state": legacy}).raise_for_status()
            assert hub.rest_auth_state(name)["refresh_token"] == legacy["refresh_token"]
            _refreshed(hub, api_token, str(body["access_token"]))
            shown = hub.rest_auth_state(name)
            assert "refresh_token" not in shown and shown["sealed_refresh_token"]
