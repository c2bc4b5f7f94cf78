"""OAuthenticator options SMARTAuthenticator inherits: each works as documented or stops the hub.

The refusals are checked on the class for every option (and for the environment
variables OAuthenticator reads their defaults from), and once against a real
JupyterHub process, for the message an admin sees. The options that do work
(``allowed_scopes``, ``refresh_user_hook``) are checked doing what
OAuthenticator's reference says they do.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from hub_process import run_hub
from traitlets.config import Config

from jupyterhub_smart.hub import SMARTAuthenticator
from jupyterhub_smart.hub.inherited import REFUSED

EHR = "https://ehr.example/fhir"
ISSUERS = {EHR: {"client_id": "hub"}}

#: A value an admin following an OAuthenticator guide might set, per refused option.
REFUSED_VALUES: dict[str, Any] = {
    "client_id": "x",
    "client_secret": "s3cret-value",
    "basic_auth": True,
    "authorize_url": "https://ehr.example/authorize",
    "token_url": "https://ehr.example/token",
    "userdata_url": "https://ehr.example/userinfo",
    "userdata_from_id_token": True,
    "userdata_params": {"fields": "id"},
    "userdata_token_method": "url",
    "username_claim": "preferred_username",
    "token_params": {"audience": "x"},
    "extra_authorize_params": {"prompt": "login"},
    "http_request_kwargs": {"proxy_host": "proxy.example"},
    "enable_pkce": False,
    "validate_server_cert": False,
    "request_otp": True,
}


def _start(section: str, **options: Any) -> SMARTAuthenticator:
    config = Config({"SMARTAuthenticator": {"issuers": ISSUERS, "allow_all": True}})
    config[section].update(options)
    return SMARTAuthenticator(config=config)


def test_every_refused_option_has_a_test_value() -> None:
    assert set(REFUSED_VALUES) == set(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_each_ignored_option_stops_the_authenticator_naming_its_replacement(
    name: str, crypt_key: None
) -> None:
    with pytest.raises(ValueError) as raised:
        _start("SMARTAuthenticator", **{name: REFUSED_VALUES[name]})
    message = str(raised.value)
    assert f"SMARTAuthenticator.{name} " in message
    assert REFUSED[name].instead in message
    assert str(REFUSED_VALUES[name]) not in message or name in ("basic_auth", "request_otp")


def test_options_set_for_oauthenticator_itself_are_refused_too(crypt_key: None) -> None:
    """``c.OAuthenticator.client_id`` reaches the subclass through traitlets' config."""
    with pytest.raises(ValueError, match=r'issuers\["<FHIR base URL>"\]\["client_id"\]'):
        _start("OAuthenticator", client_id="x")


def test_all_refused_options_are_named_at_once(crypt_key: None) -> None:
    with pytest.raises(ValueError) as raised:
        _start("SMARTAuthenticator", client_id="x", token_url="https://ehr.example/token")
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("SMARTAuthenticator.client_id ")
    assert lines[1].startswith("SMARTAuthenticator.token_url ")


@pytest.mark.parametrize(
    ("name", "value"),
    [("enable_pkce", True), ("validate_server_cert", True), ("request_otp", False)],
)
def test_values_that_describe_what_the_hub_does_are_accepted(
    name: str, value: bool, crypt_key: None
) -> None:
    assert getattr(_start("SMARTAuthenticator", **{name: value}), name) is value


@pytest.mark.parametrize(
    "name", sorted(name for name, refusal in REFUSED.items() if refusal.env is not None)
)
def test_oauthenticator_environment_variables_are_refused(
    name: str, crypt_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = REFUSED[name].env
    assert env is not None
    monkeypatch.setenv(env, "true")
    with pytest.raises(ValueError, match=f"environment variable {env} sets OAuthenticator's"):
        _start("SMARTAuthenticator")
    monkeypatch.setenv(env, "")
    assert _start("SMARTAuthenticator").ehr.policy.issuers


async def test_allowed_scopes_admits_users_granted_them(crypt_key: None) -> None:
    """OAuthenticator: users granted all of ``allowed_scopes`` are allowed."""
    scope = ["openid", "fhirUser", "user/*.rs"]
    section = {"issuers": ISSUERS, "scope": scope, "allowed_scopes": ["user/*.rs"]}
    config = Config({"SMARTAuthenticator": section})
    auth = SMARTAuthenticator(config=config)

    def model(*scopes: str) -> dict[str, Any]:
        return {"name": "u", "admin": None, "auth_state": {"iss": EHR, "scope": list(scopes)}}

    assert await auth.check_allowed("u", model("openid", "user/*.rs")) is True
    assert await auth.check_allowed("u", model("openid", "patient/*.rs")) is False


async def test_refresh_user_hook_decides_before_the_expiry_check(crypt_key: None) -> None:
    """OAuthenticator: a hook's non-None answer is refresh_user's; None falls through."""
    seen: list[tuple[Any, str, dict[str, Any]]] = []
    answer: dict[str, Any] = {"value": False}

    async def hook(authenticator: Any, user: Any, auth_state: dict[str, Any]) -> Any:
        seen.append((authenticator, user.name, auth_state))
        return answer["value"]

    class User:
        name = "practitioner-1@ehr.example-fhir"

        async def get_auth_state(self) -> dict[str, Any]:
            return {"iss": EHR, "access_token": "a", "expires_at": None}

    auth = _start("SMARTAuthenticator", refresh_user_hook=hook)
    assert await auth.refresh_user(User()) is False
    assert seen == [(auth, User.name, {"iss": EHR, "access_token": "a", "expires_at": None})]
    answer["value"] = None  # no opinion: the token has no expiry, nothing to refresh
    assert await auth.refresh_user(User()) is True


@pytest.mark.one_pass  # the authenticator's own check (a refused start-up runs in both passes)
def test_a_hub_configured_with_client_id_refuses_to_start(tmp_path: Path) -> None:
    """The message an admin sees for ``c.SMARTAuthenticator.client_id = "x"``."""
    with run_hub(tmp_path, ISSUERS, authenticator={"client_id": "x"}, expect_failure=True) as hub:
        try:
            hub.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("JupyterHub kept running with client_id set:\n" + hub.log_text()[-3000:])
        log = hub.log_text()
    assert hub.process.returncode != 0
    expected = (
        "SMARTAuthenticator.client_id is an inherited option SMARTAuthenticator does not use; "
        'use SMARTAuthenticator.issuers["<FHIR base URL>"]["client_id"] instead.'
    )
    assert expected in log, log[-3000:]
