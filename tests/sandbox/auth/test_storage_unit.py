"""Unit tests of the authorization server's SQLite storage (a real file, no fakes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from jupyterhub_smart.sandbox.auth.context import GrantContext, LaunchContext
from jupyterhub_smart.sandbox.auth.storage import AuthStorage, digest

GRANT = GrantContext(
    sub="Practitioner/p1", fhir_user="Practitioner/p1", scope="patient/*.rs", patient="x"
)


def test_launch_is_single_use_and_client_bound(tmp_path: Path) -> None:
    storage = AuthStorage(tmp_path / "a.sqlite")
    handle = storage.create_launch(LaunchContext(client_ids=("a", "b"), patient="x"), lifetime=60)
    assert storage.check_launch(handle, "c") == "The 'launch' value was issued for another client."
    assert storage.consume_launch(handle, "c") is None
    context = storage.consume_launch(handle, "b")
    assert context is not None and context.patient == "x"
    assert storage.consume_launch(handle, "a") is None
    assert "already used" in (storage.check_launch(handle, "a") or "")


def test_handles_are_stored_hashed(tmp_path: Path) -> None:
    storage = AuthStorage(tmp_path / "a.sqlite")
    storage.save_token(
        access_token="access-secret-value",
        refresh_token="refresh-secret-value",
        client_id="c",
        scope="patient/*.rs",
        grant=GRANT,
        family_id="f",
        expires_in=60,
        refresh_lifetime=60,
    )
    storage.close()
    raw = (tmp_path / "a.sqlite").read_bytes()
    assert b"access-secret-value" not in raw and b"refresh-secret-value" not in raw
    row = (
        sqlite3.connect(tmp_path / "a.sqlite").execute("SELECT access_hash FROM tokens").fetchone()
    )
    assert row[0] == digest("access-secret-value")


def test_refresh_rotates_once(tmp_path: Path) -> None:
    storage = AuthStorage(tmp_path / "a.sqlite")
    storage.save_token(
        access_token="a1",
        refresh_token="r1",
        client_id="c",
        scope="s",
        grant=GRANT,
        family_id="f",
        expires_in=60,
        refresh_lifetime=60,
    )
    record = storage.find_token("r1", "refresh_token")
    assert record is not None and not record.is_revoked()
    assert storage.rotate_refresh(record.id)
    assert not storage.rotate_refresh(record.id)
    assert storage.revoke_family("f") == 1
    access = storage.find_token("a1", "access_token")
    assert access is not None and access.is_revoked()


def test_jti_is_remembered_until_expiry(tmp_path: Path) -> None:
    import time

    storage = AuthStorage(tmp_path / "a.sqlite")
    assert storage.remember_jti("c", "j1", time.time() + 60)
    assert not storage.remember_jti("c", "j1", time.time() + 60)
    assert storage.remember_jti("other", "j1", time.time() + 60)  # per client
    assert storage.remember_jti("c", "j2", time.time() - 1)
    assert storage.remember_jti("c", "j2", time.time() + 60)  # the expired one was forgotten


def test_purge_keeps_recent_rows_and_drops_old_ones(tmp_path: Path) -> None:
    storage = AuthStorage(tmp_path / "a.sqlite")
    storage.save_token(
        access_token="old",
        refresh_token=None,
        client_id="c",
        scope="s",
        grant=None,
        family_id="f1",
        expires_in=-10,
        refresh_lifetime=0,
    )
    storage.save_token(
        access_token="new",
        refresh_token=None,
        client_id="c",
        scope="s",
        grant=None,
        family_id="f2",
        expires_in=60,
        refresh_lifetime=0,
    )
    assert storage.purge_expired(grace=3600) == 0  # still within the grace period
    assert storage.purge_expired(grace=0) == 1
    assert storage.find_token("old") is None
    assert storage.find_token("new") is not None
