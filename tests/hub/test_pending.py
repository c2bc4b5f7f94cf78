"""Pending logins: single use, bound to the browser that started them, expiring, bounded."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.pending import (
    PendingLogin,
    PendingLoginError,
    PendingLogins,
    binding_hash,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _login(browser: str = "b1") -> PendingLogin:
    return PendingLogin(
        issuer="https://ehr.example/fhir",
        launch="L",
        code_verifier="v" * 43,
        nonce="n",
        next_url="",
        scope=("openid",),
        browser=binding_hash(browser),
    )


def test_pending_is_single_use_and_bound_to_the_browser() -> None:
    store = PendingLogins()
    store.put("s1", _login("b1"))
    store.put("s2", _login("b1"))
    with pytest.raises(PendingLoginError, match="another browser"):
        store.take("s1", "b2")
    with pytest.raises(PendingLoginError, match="already used"):
        store.take("s1", "b1")  # consumed by the failed attempt too
    assert store.take("s2", "b1").issuer == "https://ehr.example/fhir"
    with pytest.raises(PendingLoginError, match="already used"):
        store.take("s2", "b1")
    with pytest.raises(PendingLoginError):
        store.take("s3", None)


def test_pending_expires_and_is_bounded() -> None:
    clock = Clock()
    store = PendingLogins(ttl=600, max_entries=3, clock=clock)
    store.put("old", _login())
    clock.now += 601
    with pytest.raises(PendingLoginError, match="expired"):
        store.take("old", "b1")
    for i in range(10):
        store.put(f"s{i}", _login())
    assert len(store) == 3
    with pytest.raises(PendingLoginError):
        store.take("s0", "b1")  # the oldest were dropped
    assert store.take("s9", "b1")


def test_pending_repr_shows_no_secret() -> None:
    text = repr(_login())
    assert "v" * 43 not in text and binding_hash("b1") not in text
