"""The authenticator's own decisions, in process (no network): issuer restrictions and scopes."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyterhub.crypto import CryptKeeper

from jupyterhub_smart.hub import SMARTAuthenticator
from jupyterhub_smart.hub.backoff import RefreshBackoff

EHR = "https://ehr.example/fhir"


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> Iterator[SMARTAuthenticator]:
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()
    yield SMARTAuthenticator(
        issuers={EHR: {"client_id": "hub", "scope": "openid fhirUser launch/patient patient/*.rs"}},
        allow_all=True,
    )
    CryptKeeper.clear_instance()


async def test_issuer_restriction_holds_with_allow_all(auth: SMARTAuthenticator) -> None:
    assert auth.allow_all
    assert await auth.check_blocked_users("u", {"auth_state": {"iss": EHR}}) is True
    assert await auth.check_blocked_users("u", {"auth_state": {"iss": EHR + "/"}}) is True
    other = {"auth_state": {"iss": "https://other.example/fhir"}}
    assert await auth.check_blocked_users("u", other) is False
    assert await auth.check_blocked_users("u", {"auth_state": {}}) is False
    auth.blocked_users = {"u"}
    assert await auth.check_blocked_users("u", {"auth_state": {"iss": EHR}}) is False


def test_scope_for_launch_kinds(auth: SMARTAuthenticator) -> None:
    reg = auth.ehr.registration(EHR)
    assert "launch" in auth.scope_for(reg, ehr_launch=True)
    assert "launch" not in auth.scope_for(reg, ehr_launch=False)
    assert auth.scope_for(reg, ehr_launch=False) == (
        "openid",
        "fhirUser",
        "launch/patient",
        "patient/*.rs",
    )


def test_public_client_has_no_jwks_and_keeps_auth_state(auth: SMARTAuthenticator) -> None:
    assert auth.public_jwks() == {"keys": []}
    assert auth.enable_auth_state is True


def test_every_option_has_help() -> None:
    own = {
        name: trait
        for name, trait in SMARTAuthenticator.class_traits(config=True).items()
        if name in SMARTAuthenticator.__dict__ or name == "scope"
    }
    assert {"issuers", "default_issuer", "scope", "required_scopes", "refresh_leeway"} <= set(own)
    assert {"username_mapper", "audit_log_path", "audit_sinks", "discovery_ttl"} <= set(own)
    assert "frame_ancestors" in own
    assert all(trait.help and len(trait.help) > 20 for trait in own.values())


def test_entry_point_smart_is_the_authenticator() -> None:
    """`c.JupyterHub.authenticator_class = "smart"` resolves through this entry point."""
    from importlib.metadata import entry_points

    (point,) = [p for p in entry_points(group="jupyterhub.authenticators") if p.name == "smart"]
    assert point.load() is SMARTAuthenticator


# ---------------------------------------------------------------- refresh_user
#
# The EHR here is an httpx.MockTransport: it answers what no real sandbox can be
# made to answer on demand (500, a timeout, a refresh held open while others wait).
# The hub-level tests in test_token_api.py cover refresh against the real sandbox.

DISCOVERY = {
    "issuer": "https://ehr.example/auth",
    "authorization_endpoint": "https://ehr.example/auth/authorize",
    "token_endpoint": "https://ehr.example/auth/token",
    "jwks_uri": "https://ehr.example/auth/jwks",
    "capabilities": ["launch-ehr", "sso-openid-connect"],
    "code_challenge_methods_supported": ["S256"],
}


class FakeUser:
    """JupyterHub's User as the authenticator sees it: a name and an auth_state store."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.name = "practitioner-1@ehr.example-fhir"
        self.state = dict(state)
        self.saved = 0

    async def get_auth_state(self) -> dict[str, Any]:
        return dict(self.state)

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
        self.saved += 1


class FakeEHR:
    """Token endpoint answers steered by ``mode``; counts the refresh requests."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.refreshes = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json=DISCOVERY)
        assert request.url.path == "/auth/token", request.url
        self.refreshes += 1
        await self.release.wait()
        if self.mode == "500":
            return httpx.Response(500, json={"error": "server_error"})
        if self.mode == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if self.mode == "reset":
            raise httpx.ConnectError("connection reset", request=request)
        if self.mode == "invalid_grant":
            return httpx.Response(400, json={"error": "invalid_grant"})
        return httpx.Response(
            200,
            json={
                "access_token": f"new-access-{self.refreshes}",
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": f"rotated-refresh-{self.refreshes}",
                "scope": "openid fhirUser patient/*.rs",
            },
        )


def _state(expires_in: float) -> dict[str, Any]:
    now = time.time()
    return {
        "iss": EHR,
        "fhir_base_url": EHR,
        "access_token": "old-access",
        "refresh_token": "old-refresh",
        "token_type": "Bearer",
        "expires_at": now + expires_in,
        "issued_at": now - 3600 + expires_in,
        "scope": ["openid", "fhirUser", "patient/*.rs"],
        "patient": "p1",
        "fhirUser": "Practitioner/1",
    }


@pytest.fixture
def ehr_auth(
    auth: SMARTAuthenticator, tmp_path: Path
) -> Iterator[Callable[[str], tuple[SMARTAuthenticator, FakeEHR]]]:
    auth.audit_log_path = str(tmp_path / "audit.jsonl")

    def make(mode: str) -> tuple[SMARTAuthenticator, FakeEHR]:
        ehr = FakeEHR(mode)
        auth.ehr._http = httpx.AsyncClient(transport=httpx.MockTransport(ehr))
        return auth, ehr

    yield make


async def test_refresh_user_does_nothing_while_the_token_is_fresh(ehr_auth: Any) -> None:
    """Expiry decides, not a probe of the EHR: no request at all for a fresh token."""
    auth, ehr = ehr_auth("good")
    user = FakeUser(_state(expires_in=3000))
    assert await auth.refresh_user(user) is True
    assert ehr.refreshes == 0 and user.saved == 0


async def test_refresh_user_refreshes_near_expiry_and_keeps_the_rotated_token(
    ehr_auth: Any,
) -> None:
    auth, ehr = ehr_auth("good")
    user = FakeUser(_state(expires_in=60))  # inside the 300 s leeway
    result = await auth.refresh_user(user)
    assert isinstance(result, dict)
    assert "refresh_token" not in result["auth_state"]  # sealed for storage
    state = auth.refresher.open_state("u", result["auth_state"])
    assert state["access_token"] == "new-access-1"
    assert state["refresh_token"] == "rotated-refresh-1"
    assert state["expires_at"] > time.time() + 3000
    assert state["patient"] == "p1"  # the launch context survives a refresh
    stored = auth.refresher.open_state("u", user.state)
    assert user.saved == 1 and stored["refresh_token"] == "rotated-refresh-1"  # persisted
    assert ehr.refreshes == 1


@pytest.mark.parametrize("expires_in", [60, -10], ids=["expiring", "expired"])
@pytest.mark.parametrize("mode", ["500", "timeout", "reset"])
async def test_refresh_user_keeps_the_session_when_the_ehr_blinks(
    ehr_auth: Any, mode: str, expires_in: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5xx or network error never signs the user out; the state is kept for a retry."""
    auth, ehr = ehr_auth(mode)
    now = [0.0]
    auth.refresher.backoff = RefreshBackoff(5.0, 300.0, clock=lambda: now[0])
    user = FakeUser(_state(expires_in=expires_in))
    before = dict(user.state)
    result = await auth.refresh_user(user)
    # True, or the unchanged state (the current token still works for a minute)
    assert result is True or (
        auth.refresher.open_state("u", result["auth_state"]) == before  # stored sealed
    ), result
    assert user.state == before and user.saved == 0
    assert ehr.refreshes == 1
    assert "keeping the session" in caplog.text
    assert "old-refresh" not in caplog.text and "old-access" not in caplog.text
    # at once again: the hub backs off and does not ask the EHR
    await auth.refresh_user(user)
    assert ehr.refreshes == 1
    # later, the EHR is back: the kept refresh token works
    ehr.mode = "good"
    now[0] += 5.0
    assert isinstance(await auth.refresh_user(user), dict)
    assert ehr.refreshes == 2


async def test_refresh_user_invalid_grant_means_sign_in_again(
    ehr_auth: Any, caplog: pytest.LogCaptureFixture
) -> None:
    auth, _ehr = ehr_auth("invalid_grant")
    user = FakeUser(_state(expires_in=60))
    assert await auth.refresh_user(user) is False
    assert "invalid_grant" in caplog.text and "old-refresh" not in caplog.text


async def test_refresh_user_without_refresh_token_means_sign_in_again(ehr_auth: Any) -> None:
    auth, ehr = ehr_auth("good")
    state = _state(expires_in=60)
    del state["refresh_token"]
    assert await auth.refresh_user(FakeUser(state)) is False
    assert ehr.refreshes == 0


async def test_refresh_user_for_an_issuer_no_longer_configured_signs_out(ehr_auth: Any) -> None:
    auth, ehr = ehr_auth("good")
    state = {**_state(expires_in=3000), "iss": "https://gone.example/fhir"}
    assert await auth.refresh_user(FakeUser(state)) is False
    assert ehr.refreshes == 0


async def test_token_api_state_for_an_issuer_no_longer_configured_is_refused(
    ehr_auth: Any,
) -> None:
    """An EHR the admin removed: its still-valid token is not handed out any more."""
    from jupyterhub_smart.hub.errors import ReauthenticationRequired

    auth, ehr = ehr_auth("good")
    user = FakeUser({**_state(expires_in=3000), "iss": "https://gone.example/fhir"})
    with pytest.raises(ReauthenticationRequired, match="no longer configured") as raised:
        await auth.refresher.fresh_auth_state(user, min_validity=auth.refresh_leeway)
    assert raised.value.recorded  # recorded here, once, so the token API adds none
    # refresh_user (which JupyterHub 5 runs first on the same request) finds out too: no second record
    assert await auth.refresh_user(user) is False
    with pytest.raises(ReauthenticationRequired):
        await auth.refresher.fresh_auth_state(user, min_validity=auth.refresh_leeway)
    await auth.get_audit_log().aclose()
    records = Path(auth.audit_log_path).read_text().splitlines()
    reauth = [r for r in records if '"reauthentication-required"' in r]
    assert len(reauth) == 1 and "no longer configured" in reauth[0] and "gone.example" in reauth[0]
    assert ehr.refreshes == 0 and user.saved == 0
    # the configured issuer's user is served as before
    ok = FakeUser(_state(expires_in=3000))
    served = await auth.refresher.fresh_auth_state(ok, min_validity=auth.refresh_leeway)
    assert served["iss"] == EHR


async def test_refused_refresh_is_recorded_once_by_the_refresh(ehr_auth: Any) -> None:
    """invalid_grant: the refresh writes the one reauthentication-required record (with
    the EHR's reason) and says so on the exception, so the token API adds none."""
    from jupyterhub_smart.hub.errors import ReauthenticationRequired

    auth, _ehr = ehr_auth("invalid_grant")
    user = FakeUser(_state(expires_in=60))
    with pytest.raises(ReauthenticationRequired) as raised:
        await auth.refresher.fresh_auth_state(user, min_validity=auth.refresh_leeway)
    assert raised.value.recorded
    await auth.get_audit_log().aclose()
    records = Path(auth.audit_log_path).read_text().splitlines()
    reauth = [r for r in records if '"reauthentication-required"' in r]
    assert len(reauth) == 1 and "invalid_grant" in reauth[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="a tiny tmpfs that really fills up needs root")
async def test_refresh_with_a_full_audit_disk_keeps_the_new_tokens_and_hands_none_out(
    auth: SMARTAuthenticator, tmp_path: Path
) -> None:
    """The EHR rotated the refresh token: it is stored (else the session dies); the refresh
    cannot be recorded, so fresh_auth_state refuses (AuditUnavailable: the token API's 503)
    and refresh_user keeps the session instead of failing JupyterHub's request."""
    from audit.helpers import fill, tmpfs

    from jupyterhub_smart.audit import AuditUnavailable

    with tmpfs(tmp_path / "disk", size="256k") as disk:
        auth.audit_log_path = str(disk / "audit.jsonl")
        auth.get_audit_log()  # opened while the disk has room, as on a running hub
        fill(disk)
        for call in ("token_api", "refresh_user"):
            ehr = FakeEHR("good")
            auth.ehr._http = httpx.AsyncClient(transport=httpx.MockTransport(ehr))
            user = FakeUser(_state(expires_in=60))
            if call == "token_api":
                with pytest.raises(AuditUnavailable):
                    await auth.refresher.fresh_auth_state(user, min_validity=auth.refresh_leeway)
            else:
                assert await auth.refresh_user(user) is True
            assert ehr.refreshes == 1 and user.saved == 1
            assert auth.refresher.open_state("u", user.state)["refresh_token"] == (
                "rotated-refresh-1"
            )
        auth.get_audit_log().close()


async def test_concurrent_refresh_user_calls_make_one_refresh(ehr_auth: Any) -> None:
    """Single flight: 20 callers while a refresh is held open at the EHR, one request."""
    auth, ehr = ehr_auth("good")
    ehr.release.clear()
    user = FakeUser(_state(expires_in=60))
    calls = [asyncio.ensure_future(auth.refresh_user(user)) for _ in range(20)]
    while ehr.refreshes == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # let every caller reach the flight
    ehr.release.set()
    results = await asyncio.gather(*calls)
    assert ehr.refreshes == 1
    assert all(isinstance(r, dict) for r in results)
    assert {r["auth_state"]["access_token"] for r in results} == {"new-access-1"}
    assert user.saved == 1


# ---------------------------------------------------------------- username_mapper


async def test_username_mapper_sync_and_async(auth: SMARTAuthenticator) -> None:
    seen: list[tuple[str, str | None, dict[str, Any]]] = []

    def mapper(issuer: str, fhir_user: str | None, claims: dict[str, Any]) -> str:
        seen.append((issuer, fhir_user, claims))
        return "dr-" + (fhir_user or "x").split("/")[-1]

    async def async_mapper(issuer: str, fhir_user: str | None, claims: dict[str, Any]) -> str:
        return "async-" + claims["sub"]

    claims = {"sub": "s1", "fhirUser": "Practitioner/7"}
    auth.username_mapper = mapper
    assert await auth._username(EHR, "Practitioner/7", "s1", claims) == "dr-7"
    assert seen == [(EHR, "Practitioner/7", claims)]
    auth.username_mapper = async_mapper
    assert await auth._username(EHR, "Practitioner/7", "s1", claims) == "async-s1"
    auth.username_mapper = None  # default mapping again
    assert await auth._username(EHR, "Practitioner/7", "s1", claims) == (
        "practitioner-7@ehr.example-fhir"
    )


@pytest.mark.parametrize("returned", ["", None, 42])
async def test_username_mapper_without_a_name_is_a_clear_500(
    auth: SMARTAuthenticator, returned: object
) -> None:
    from jupyterhub_smart.smart.errors import SMARTError

    auth.username_mapper = lambda issuer, fhir_user, claims: returned
    with pytest.raises(SMARTError, match="username_mapper returned no username") as info:
        await auth._username(EHR, "Practitioner/7", None, {})
    assert info.value.status == 500 and info.value.error == "username_mapper_failed"


def test_username_mapper_must_be_callable(auth: SMARTAuthenticator) -> None:
    from traitlets import TraitError

    with pytest.raises((ValueError, TraitError), match="callable"):
        auth.username_mapper = "not callable"


# ---------------------------------------------------------------- logout


async def test_logout_wins_over_a_refresh_in_flight(ehr_auth: Any) -> None:
    """The refresh is held open at the EHR while the user logs out: nothing is written back."""
    from jupyterhub_smart.hub.errors import ReauthenticationRequired

    auth, ehr = ehr_auth("good")
    ehr.release.clear()
    user = FakeUser(_state(expires_in=60))
    refreshing = asyncio.ensure_future(
        auth.refresher.fresh_auth_state(user, min_validity=auth.refresh_leeway)
    )
    while ehr.refreshes == 0:
        await asyncio.sleep(0.01)
    assert "dropped its EHR tokens" in await auth.refresher.end_grant(user, revoke=True)
    ehr.release.set()
    with pytest.raises(ReauthenticationRequired):
        await refreshing
    assert not {"access_token", "refresh_token"} & set(user.state)
    with pytest.raises(ReauthenticationRequired):
        await auth.refresher.fresh_auth_state(user, min_validity=auth.refresh_leeway)
    assert await auth.refresh_user(user) is True  # nothing left to refresh; the hub asks nothing


async def test_failed_revocation_is_an_error_and_an_event_and_never_called_revoked(
    auth: SMARTAuthenticator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth.audit_log_path = str(tmp_path / "audit.jsonl")

    async def ehr(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(
                200, json={**DISCOVERY, "revocation_endpoint": "https://ehr.example/auth/revoke"}
            )
        return httpx.Response(503, text="down")

    auth.ehr._http = httpx.AsyncClient(transport=httpx.MockTransport(ehr))
    user = FakeUser(_state(expires_in=3000))
    outcome = await auth.refresher.end_grant(user, revoke=True)
    assert "NOT revoked" in outcome and "dropped its EHR tokens" in outcome
    assert not {"access_token", "refresh_token"} & set(user.state)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("Could not revoke the refresh token" in r.getMessage() for r in errors)
    await auth.get_audit_log().aclose()
    records = Path(auth.audit_log_path).read_text()
    assert '"token-revocation-failed"' in records and '"token-revoked"' not in records
    assert "old-refresh" not in records and "old-refresh" not in caplog.text


async def test_blocked_or_no_longer_allowed_users_lose_ehr_access(
    auth: SMARTAuthenticator, tmp_path: Path
) -> None:
    """JupyterHub applies these rules at sign-in; the token API and audit endpoint ask on
    every call, and the stored grant is revoked (no revocation endpoint here) and dropped."""
    auth.audit_log_path = str(tmp_path / "audit.jsonl")
    auth.ehr._http = httpx.AsyncClient(transport=httpx.MockTransport(FakeEHR("good")))
    user = FakeUser(_state(expires_in=3000))
    user.admin = False  # type: ignore[attr-defined]
    assert await auth.access_withdrawn(user) is None
    auth.blocked_users = {user.name}
    reason = await auth.access_withdrawn(user)
    assert reason is not None and "blocked" in reason
    auth.blocked_users = set()
    auth.allow_all = False
    auth.allowed_users = {"someone-else"}
    reason = await auth.access_withdrawn(user)
    assert reason is not None and "no longer allowed" in reason
    await auth.withdraw_access(user, reason)
    await auth.withdraw_access(user, reason)  # nothing left: no second record
    assert not {"access_token", "refresh_token"} & set(user.state)
    await auth.get_audit_log().aclose()
    records = Path(auth.audit_log_path).read_text().splitlines()
    assert len([r for r in records if '"access-withdrawn"' in r]) == 1
