"""Pending logins: single use, bound to the browser that started them, expiring, bounded."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.pending import (
    PendingLogin,
    PendingLoginError,
    PendingLogins,
    PendingLoginsFull,
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
    for i in range(3):
        store.put(f"s{i}", _login(), client=f"10.0.0.{i}")
    with pytest.raises(PendingLoginsFull) as full:
        store.put("s9", _login(), client="10.0.0.9")
    assert full.value.status == 503 and full.value.retry_after >= 1
    assert len(store) == 3
    assert store.take("s0", "b1")  # nothing in flight is dropped for a newcomer
    store.put("s9", _login(), client="10.0.0.9")  # room again
    clock.now += 601
    store.put("s10", _login(), client="10.0.0.10")  # the expired ones made room
    assert len(store) == 1


def test_pending_is_bounded_per_client_address() -> None:
    store = PendingLogins(max_entries=100, max_per_client=2)
    store.put("a1", _login(), client="203.0.113.7")
    store.put("a2", _login(), client="203.0.113.7")
    with pytest.raises(PendingLoginsFull) as full:
        store.put("a3", _login(), client="203.0.113.7")
    assert full.value.status == 429
    store.put("u1", _login(), client="198.51.100.9")  # another address is not affected
    assert store.take("a1", "b1") and store.pending_for("203.0.113.7") == 1
    store.put("a3", _login(), client="203.0.113.7")  # a finished sign-in frees its slot
    assert store.take("u1", "b1")


def test_pending_repr_shows_no_secret() -> None:
    text = repr(_login())
    assert "v" * 43 not in text and binding_hash("b1") not in text
