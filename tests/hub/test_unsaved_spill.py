"""Refreshed tokens the database did not take: on disk, encrypted, taken back by the next run.

In process: the EHR is an ``httpx.MockTransport`` that rotates the refresh token
and records revocations; the user is JupyterHub's User as the authenticator
sees it, with a database that refuses writes while ``down`` is set. A second
authenticator on the same folder and crypt key plays the hub after a kill (the
real SIGKILL is in test_database_outage.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyterhub.crypto import CryptKeeper
from sqlalchemy.exc import OperationalError

from jupyterhub_smart.hub import SMARTAuthenticator

EHR = "https://ehr.example/fhir"
DISCOVERY = {
    "issuer": "https://ehr.example/auth",
    "authorization_endpoint": "https://ehr.example/auth/authorize",
    "token_endpoint": "https://ehr.example/auth/token",
    "revocation_endpoint": "https://ehr.example/auth/revoke",
    "capabilities": ["launch-ehr"],
    "code_challenge_methods_supported": ["S256"],
}


class RotatingEHR:
    """Each refresh rotates the refresh token; revocations are recorded."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.revoked: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json=DISCOVERY)
        form = dict(httpx.QueryParams(request.content.decode()))
        if request.url.path == "/auth/revoke":
            self.revoked.append(form["token"])
            return httpx.Response(200)
        self.refreshes += 1
        return httpx.Response(
            200,
            json={
                "access_token": f"rotated-access-{secrets.token_hex(8)}",
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": f"rotated-refresh-{secrets.token_hex(8)}",
                "scope": "openid fhirUser patient/*.rs",
            },
        )


class Database:
    """The session JupyterHub's User reads through: writes fail while ``down``."""

    def __init__(self) -> None:
        self.down = False

    def rollback(self) -> None:
        pass


class User:
    """JupyterHub's User as the refresh path uses it (name, auth_state, its ciphertext)."""

    def __init__(self, state: dict[str, Any], db: Database, ciphertext: bytes) -> None:
        self.name = "practitioner-1@ehr.example-fhir"
        self.state = dict(state)
        self.db = db
        self.encrypted_auth_state = ciphertext

    async def get_auth_state(self) -> dict[str, Any]:
        return dict(self.state)

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        if self.db.down:
            raise OperationalError("UPDATE users", {}, Exception("server closed the connection"))
        self.state = dict(state)
        self.encrypted_auth_state = secrets.token_bytes(16)


def _expiring_state() -> dict[str, Any]:
    now = time.time()
    return {
        "iss": EHR,
        "fhir_base_url": EHR,
        "access_token": "old-access",
        "refresh_token": "old-refresh",
        "token_type": "Bearer",
        "expires_at": now + 10,
        "issued_at": now - 3590,
        "scope": ["openid", "fhirUser", "patient/*.rs"],
        "fhirUser": "Practitioner/1",
    }


@pytest.fixture
def crypt_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()
    yield
    CryptKeeper.clear_instance()


def _hub(tmp_path: Path, ehr: RotatingEHR, run: int) -> SMARTAuthenticator:
    """One run of the hub's authenticator on the same folder (and crypt key)."""
    auth = SMARTAuthenticator(
        issuers={EHR: {"client_id": "hub"}},
        allow_all=True,
        audit_log_path=str(tmp_path / f"audit-{run}.jsonl"),
        unsaved_tokens_dir=str(tmp_path / "unsaved"),
    )
    auth.ehr._http = httpx.AsyncClient(transport=httpx.MockTransport(ehr))
    auth.refresher.unsaved.retry_interval = 0.05
    return auth


async def _until(condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def _kill() -> None:
    """The hub process ends: every task but the test's is gone, nothing more is stored."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _refresh_during_an_outage(auth: SMARTAuthenticator, user: User) -> dict[str, Any]:
    user.db.down = True
    fresh = await auth.refresher.fresh_auth_state(user, min_validity=300)
    assert fresh["refresh_token"].startswith("rotated-refresh-")
    assert user.state["refresh_token"] == "old-refresh"  # the database did not take it
    return fresh


@pytest.mark.usefixtures("crypt_key")
async def test_a_killed_hub_takes_back_the_unsaved_tokens_from_an_encrypted_file(
    tmp_path: Path,
) -> None:
    ehr = RotatingEHR()
    db = Database()
    user = User(_expiring_state(), db, b"ciphertext-before-the-outage")
    fresh = await _refresh_during_an_outage(_hub(tmp_path, ehr, 1), user)

    (spilled,) = (tmp_path / "unsaved").iterdir()
    assert stat.S_IMODE(spilled.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "unsaved").stat().st_mode) == 0o700
    content = spilled.read_bytes()
    for secret in (fresh["refresh_token"], fresh["access_token"], "old-refresh"):
        assert secret.encode() not in content
    assert user.name.encode() not in spilled.name.encode() + content

    await _kill()
    db.down = False  # the database answers again; the next run starts
    again = _hub(tmp_path, ehr, 2)
    assert again.refresher.unsaved.restore(lambda name: user if name == user.name else None) == [
        user.name
    ]
    # used at once, before it is stored: the spent refresh token is never presented
    served = await again.refresher.fresh_auth_state(user, min_validity=300)
    assert served["access_token"] == fresh["access_token"]
    await _until(lambda: not list((tmp_path / "unsaved").iterdir()), "never stored")
    stored = again.refresher.open_state(user.name, user.state)
    assert stored["refresh_token"] == fresh["refresh_token"]
    assert ehr.refreshes == 1 and ehr.revoked == []


@pytest.mark.usefixtures("crypt_key")
async def test_unsaved_tokens_replaced_by_a_new_sign_in_are_revoked_at_the_ehr(
    tmp_path: Path,
) -> None:
    ehr = RotatingEHR()
    db = Database()
    user = User(_expiring_state(), db, b"ciphertext-before-the-outage")
    auth = _hub(tmp_path, ehr, 1)
    fresh = await _refresh_during_an_outage(auth, user)
    # the database is back and the user signs in again (a new grant) before the retry
    user.state = {**_expiring_state(), "refresh_token": "new-sign-in"}
    user.encrypted_auth_state = b"ciphertext-of-the-new-sign-in"
    db.down = False
    await _until(lambda: ehr.revoked, "the dropped refresh token was not revoked")
    assert ehr.revoked == [fresh["refresh_token"]]
    assert user.state["refresh_token"] == "new-sign-in"  # the new sign-in wins
    assert not list((tmp_path / "unsaved").iterdir())
    assert (await auth.refresher.load(user) or {})["refresh_token"] == "new-sign-in"


@pytest.mark.usefixtures("crypt_key")
async def test_a_spill_file_without_its_key_is_left_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = User(_expiring_state(), Database(), b"ciphertext-before-the-outage")
    await _refresh_during_an_outage(_hub(tmp_path, RotatingEHR(), 1), user)
    await _kill()
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))  # the key was replaced
    CryptKeeper.clear_instance()
    again = _hub(tmp_path, RotatingEHR(), 2)
    assert again.refresher.unsaved.restore(lambda _name: user) == []
    assert len(os.listdir(tmp_path / "unsaved")) == 1
