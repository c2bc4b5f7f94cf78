"""Fixtures of the hub tests: two real sandboxes and one real JupyterHub for the package.

Sandbox A registers the hub as a public client; sandbox B as a
``private_key_jwt`` client whose keys the sandbox fetches from the hub's own
``/hub/smart/jwks.json``. One hub serves both issuers, which also checks that
the same practitioner at two EHRs becomes two users.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_process import Hub, run_hub
from jupyterhub.crypto import CryptKeeper
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.smart.keys import write_key_pair

from .evil_ehr import EvilEHR, run_evil_ehr

#: Every test client is 127.0.0.1: the package's hubs record each unauthenticated request
#: on its own (tests read those records), the audit budget has its own test (test_flood).
ONE_BY_ONE = {"unauthenticated_audit_records": 100_000}


@dataclass
class SmartEnv:
    hub: Hub
    public: SandboxProcess  # the hub is a public client here
    jwt: SandboxProcess  # and a private_key_jwt client here
    key_path: Path


def sandbox_client(client_id: str, hub_url: str, **extra: object) -> dict[str, object]:
    return {"client_id": client_id, "redirect_uris": [f"{hub_url}/hub/oauth_callback"], **extra}


@pytest.fixture(scope="package")
def smart_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartEnv]:
    work = tmp_path_factory.mktemp("hub-env")
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    key_path, _ = write_key_pair("RS384", work / "keys", rsa_bits=2048)
    public_client = sandbox_client("hub-public", hub_url, type="public")
    jwt_client = sandbox_client(
        "hub-jwt",
        hub_url,
        type="confidential-asymmetric",
        jwks_uri=f"{hub_url}/hub/smart/jwks.json",
    )
    with (
        run_sandbox(work / "sandbox-public", [public_client]) as public,
        run_sandbox(
            work / "sandbox-jwt", [jwt_client], extra_args=["--access-token-lifetime", "3600"]
        ) as jwt,
    ):
        issuers = {
            public.iss: {"client_id": "hub-public", "client_auth": "public"},
            jwt.iss: {
                "client_id": "hub-jwt",
                "client_auth": "private_key_jwt",
                "private_key_path": str(key_path),
            },
        }
        with run_hub(work / "hub", issuers, port=port, authenticator=ONE_BY_ONE) as hub:
            yield SmartEnv(hub, public, jwt, key_path)


@dataclass
class EvilEnv:
    hub: Hub
    evil: EvilEHR
    sandbox: SandboxProcess


@pytest.fixture(scope="package")
def evil_env(tmp_path_factory: pytest.TempPathFactory, smart_env: SmartEnv) -> Iterator[EvilEnv]:
    """A hub registered with a misbehaving EHR (and with sandbox A, as a control)."""
    work = tmp_path_factory.mktemp("evil-env")
    key_path, _ = write_key_pair("ES384", work / "keys")
    with run_evil_ehr(free_port()) as evil:
        issuers = {
            evil.iss: {
                "client_id": evil.client_id,
                "client_auth": "private_key_jwt",
                "private_key_path": str(key_path),
            },
            evil.broken_iss: {"client_id": "hub-broken", "client_auth": "public"},
            evil.basic_iss: {
                "client_id": evil.client_id,
                "client_auth": "client_secret_basic",
                "client_secret": evil.client_secret,
            },
        }
        # token_timeout: the token endpoint's own deadline, shorter than the evil EHR's
        # 4 s "token_timeout" mode, which must end the sign-in with 504
        options = {
            "http_timeout": 2.0,
            "token_timeout": 2.0,
            "required_scopes": ["patient/*.rs"],
            **ONE_BY_ONE,
        }
        with run_hub(work / "hub", issuers, authenticator=options) as hub:
            yield EvilEnv(hub, evil, smart_env.public)


@pytest.fixture
def crypt_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A JUPYTERHUB_CRYPT_KEY for an in-process SMARTAuthenticator (it refuses to start without)."""
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()
    yield
    CryptKeeper.clear_instance()
