"""Unit tests of the hub's pure helpers: pending logins, usernames, next URLs."""

from __future__ import annotations

import pytest

from jupyterhub_smart.hub.audit_budget import AuditBudget
from jupyterhub_smart.hub.pages import safe_next_url
from jupyterhub_smart.hub.pending import (
    PendingLogin,
    PendingLoginError,
    PendingLogins,
    PendingLoginsFull,
    binding_hash,
)
from jupyterhub_smart.hub.username import default_username, issuer_slug


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


def test_audit_budget_counts_what_it_does_not_write() -> None:
    clock = Clock()
    budget = AuditBudget(window=60, per_source=3, total=5, max_summaries=2, clock=clock)
    sent = {"203.0.113.7": 50, "198.51.100.9": 2, "192.0.2.1": 4, "192.0.2.2": 4}
    written = {source: 0 for source in sent}
    for source, count in sent.items():
        for _ in range(count):
            written[source] += budget.admit("launch-received", source)
    assert written["203.0.113.7"] == 3 and sum(written.values()) == 5  # per source, then total
    assert not budget.due()
    clock.now += 60
    assert budget.due()
    summaries = budget.drain()
    assert len(summaries) == 3  # two addresses by name, the rest summed
    counted = sum(s.count for s in summaries)
    assert counted + sum(written.values()) == sum(sent.values())  # nothing lost
    merged = next(s for s in summaries if s.client is None)
    assert "other client addresses" in merged.description(60)
    assert budget.admit("launch-received", "203.0.113.7")  # a new window
    assert budget.drain() == []


def test_pending_repr_shows_no_secret() -> None:
    text = repr(_login())
    assert "v" * 43 not in text and binding_hash("b1") not in text


@pytest.mark.parametrize(
    ("issuer", "fhir_user", "sub", "expected"),
    [
        (
            "https://ehr.example.org/fhir",
            "Practitioner/123",
            None,
            "practitioner-123@ehr.example.org-fhir",
        ),
        (
            "https://ehr.example.org:8443/r4",
            "Patient/abc",
            None,
            "patient-abc@ehr.example.org-8443-r4",
        ),
        ("https://ehr.example.org/fhir", None, "user 1", None),
    ],
)
def test_usernames(
    issuer: str, fhir_user: str | None, sub: str | None, expected: str | None
) -> None:
    name = default_username(issuer, fhir_user, sub)
    if expected:
        assert name == expected
    assert "/" not in name and " " not in name and name == name.lower()
    assert name == default_username(issuer, fhir_user, sub)  # stable


def test_usernames_keep_case_sensitive_ids_apart() -> None:
    a = default_username("https://e.example/fhir", "Practitioner/Abc", None)
    b = default_username("https://e.example/fhir", "Practitioner/abc", None)
    assert a != b and a == a.lower()


def test_usernames_differ_per_issuer() -> None:
    assert default_username("https://a.example/fhir", "Practitioner/1", None) != default_username(
        "https://b.example/fhir", "Practitioner/1", None
    )
    assert issuer_slug("https://a.example/fhir") == "a.example-fhir"


def test_username_needs_an_identity() -> None:
    with pytest.raises(ValueError):
        default_username("https://a.example/fhir", None, None)


@pytest.mark.parametrize(
    "value",
    [
        "//evil",
        "\\\\evil",
        "/\\evil",
        "/%2F%2Fevil",
        "https://evil/x",
        "/%5C%5Cevil",
        "javascript:x",
        "/a\nb",
        "evil",
    ],
)
def test_off_site_next_is_refused(value: str) -> None:
    assert safe_next_url(value) == ""


@pytest.mark.parametrize("value", ["/hub/home", "/user/x/lab?reset", "/hub/token#t"])
def test_on_site_next_is_kept(value: str) -> None:
    assert safe_next_url(value) == value
