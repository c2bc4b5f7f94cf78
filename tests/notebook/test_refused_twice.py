"""A 401 for the new token too: report it as well and fetch once more, bounded.

The case: a kernel holds an older EHR launch's token; the FHIR server refuses
it; the notebook reports it (``?rejected=``) and the hub hands out its current
token (a newer launch's), which the FHIR server refuses too (consent withdrawn,
token revoked). Reporting *that* token makes the hub refresh it (or say to sign
in again), so the same call ends in data or in ``ReauthenticationRequired``,
never in a bare 401 first. At most two token changes per request; no retry
when the provider has no other token.

Three layers, each with the real parts where they can produce the fault: the
client's own requests with a real JupyterHub and sandbox (and a scripted token
API for the hub's answers a real hub gives only in rare states), and the
``httpx``/``requests`` auth objects against the real sandbox.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from hub_process import Browser, Hub, ehr_launch, run_hub
from sandbox_process import SandboxProcess, free_port, run_sandbox

from jupyterhub_smart.notebook import (
    AsyncSMARTClient,
    CallableTokenProvider,
    FHIRError,
    HubTokenProvider,
    ReauthenticationRequired,
    RetryPolicy,
    SMARTClient,
    connect,
)
from jupyterhub_smart.notebook.auth import SMARTAuth, SMARTRequestsAuth
from jupyterhub_smart.notebook.http import MAX_TOKEN_CHANGES

from .fakes import FHIR_BASE, HUB_API, json_response, outcome, secret
from .sandbox_tokens import SEEN_SECRETS, system_token

FAST = RetryPolicy(max_retries=1, backoff=0.01, max_backoff=0.02)
PATIENT = "patient-00001"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- the client's policy, with a scripted hub token API ----------------------------------


@dataclass
class ScriptedHub:
    """The token API contract; ``refuse_after`` answers reauthentication_required to that report."""

    api_token: str = field(default_factory=lambda: secret("api"))
    tokens: list[str] = field(default_factory=list)
    reported: list[str | None] = field(default_factory=list)
    reauth_on_report: int | None = None  # the n-th report (1-based) gets reauthentication
    same_token_on_report: int | None = None  # ... or gets the token it reports

    def __call__(self, request: httpx.Request) -> httpx.Response:
        rejected = request.url.params.get("rejected")
        self.reported.append(rejected)
        reports = sum(1 for r in self.reported if r)
        if rejected and reports == self.reauth_on_report:
            return json_response(
                401, {"error": "reauthentication_required", "login_url": "/hub/oauth_login"}
            )
        if rejected and reports == self.same_token_on_report:
            token = self.tokens[-1]
        else:
            token = secret("access")
            self.tokens.append(token)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "fhir_base_url": FHIR_BASE,
            "scope": "system/*.rs",
        }
        return json_response(200, body)


@dataclass
class FHIRServer:
    """Accepts only the tokens in ``good`` (401 with an OperationOutcome otherwise)."""

    good: Callable[[str], bool]
    seen: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        self.seen.append(token)
        if self.good(token):
            return json_response(200, {"resourceType": "Patient", "id": "p1"})
        return json_response(401, outcome("token not active", "login"))


def _client(hub: ScriptedHub, fhir: FHIRServer) -> SMARTClient:
    provider = HubTokenProvider(HUB_API, hub.api_token, transport=httpx.MockTransport(hub))
    return SMARTClient(provider, retry=FAST, transport=httpx.MockTransport(fhir))


def test_the_second_refused_token_is_reported_and_the_third_is_used() -> None:
    hub = ScriptedHub()
    fhir = FHIRServer(good=lambda t: len(hub.tokens) >= 3 and t == hub.tokens[2])
    assert _client(hub, fhir).read("Patient", "p1")["id"] == "p1"
    assert fhir.seen == hub.tokens and len(hub.tokens) == 3
    # each refused token was named to the hub by its hash (never the token)
    assert hub.reported == [None, sha256(hub.tokens[0]), sha256(hub.tokens[1])]


def test_a_refused_new_token_ends_in_reauthentication_in_the_same_call() -> None:
    hub = ScriptedHub(reauth_on_report=2)
    fhir = FHIRServer(good=lambda t: False)
    with pytest.raises(ReauthenticationRequired) as raised:
        _client(hub, fhir).read("Patient", "p1")
    assert raised.value.login_url == "/hub/oauth_login"  # a path stays one (not the hub API's host)
    assert len(fhir.seen) == 2 and hub.reported[-1] == sha256(hub.tokens[1])


async def test_the_async_client_does_the_same() -> None:
    hub = ScriptedHub(reauth_on_report=2)
    fhir = FHIRServer(good=lambda t: False)
    provider = HubTokenProvider(HUB_API, hub.api_token, transport=httpx.MockTransport(hub))
    async with AsyncSMARTClient(
        provider, retry=FAST, transport=httpx.MockTransport(fhir)
    ) as client:
        with pytest.raises(ReauthenticationRequired):
            await client.read("Patient", "p1")
    assert len(fhir.seen) == 2


def test_no_retry_when_the_hub_hands_back_the_refused_token() -> None:
    hub = ScriptedHub(same_token_on_report=2)
    fhir = FHIRServer(good=lambda t: False)
    with pytest.raises(FHIRError, match="HTTP 401") as raised:
        _client(hub, fhir).read("Patient", "p1")
    assert raised.value.status == 401
    assert fhir.seen == [hub.tokens[0], hub.tokens[1]]  # the unchanged token was not re-sent


def test_a_server_that_refuses_every_token_costs_a_bounded_number_of_requests() -> None:
    hub = ScriptedHub()
    fhir = FHIRServer(good=lambda t: False)
    with pytest.raises(FHIRError, match="HTTP 401"):
        _client(hub, fhir).read("Patient", "p1")
    assert len(fhir.seen) == MAX_TOKEN_CHANGES + 1 == 3
    assert len(hub.tokens) == 3 and all(hub.reported[1:])


# --- the auth objects, against the real sandbox ------------------------------------------


class Minting:
    """Mints Backend Services tokens; the first ``dead`` of them are revoked (real 401s)."""

    def __init__(self, sandbox: SandboxProcess, dead: int) -> None:
        self.sandbox = sandbox
        self.dead = dead
        self.minted: list[str] = []

    def __call__(self) -> dict[str, Any]:
        body = system_token(self.sandbox)
        self.minted.append(body["access_token"])
        if len(self.minted) <= self.dead:
            revoke(self.sandbox, body["access_token"])
        return body


def revoke(sandbox: SandboxProcess, token: str) -> None:
    response = httpx.post(
        f"{sandbox.origin}/auth/revoke",
        auth=("test-symmetric", "test-symmetric-secret-0123456789"),
        data={"token": token},
    )
    assert response.status_code == 200


class Sent:
    """httpx request hook: the bearer tokens the client really sent."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        self.tokens.append(request.headers["Authorization"].removeprefix("Bearer "))


@pytest.mark.parametrize(("dead", "status", "sends"), [(2, 200, 3), (5, 401, 3)])
def test_httpx_auth_tries_two_new_tokens_at_most(
    sandbox: SandboxProcess, dead: int, status: int, sends: int
) -> None:
    mint, sent = Minting(sandbox, dead), Sent()
    auth = SMARTAuth(CallableTokenProvider(mint, sandbox.iss))
    with httpx.Client(auth=auth, event_hooks={"request": [sent]}) as http:
        response = http.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == status
    assert sent.tokens == mint.minted and len(sent.tokens) == sends


async def test_async_httpx_auth_tries_two_new_tokens_at_most(sandbox: SandboxProcess) -> None:
    mint = Minting(sandbox, 2)
    auth = SMARTAuth(CallableTokenProvider(mint, sandbox.iss))
    async with httpx.AsyncClient(auth=auth) as http:
        response = await http.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == 200 and len(mint.minted) == 3


@pytest.mark.parametrize(("dead", "status"), [(2, 200), (5, 401)])
def test_requests_auth_tries_two_new_tokens_at_most(
    sandbox: SandboxProcess, dead: int, status: int
) -> None:
    mint = Minting(sandbox, dead)
    session = requests.Session()
    session.auth = SMARTRequestsAuth(CallableTokenProvider(mint, sandbox.iss))
    response = session.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == status
    assert len(mint.minted) == 3 and len(response.history) == 2
    sent = [r.request.headers["Authorization"] for r in [*response.history, response]]
    assert sent == [f"Bearer {t}" for t in mint.minted]


def test_auth_objects_do_not_resend_an_unchanged_token(sandbox: SandboxProcess) -> None:
    dead = system_token(sandbox)["access_token"]
    revoke(sandbox, dead)
    calls: list[int] = []

    def same() -> str:
        calls.append(1)
        return dead

    sent = Sent()
    with httpx.Client(
        auth=SMARTAuth(CallableTokenProvider(same, sandbox.iss)), event_hooks={"request": [sent]}
    ) as http:
        assert http.get(f"{sandbox.iss}/Patient/{PATIENT}").status_code == 401
    assert len(sent.tokens) == 1 and len(calls) == 2  # asked again, nothing new: no retry
    session = requests.Session()
    session.auth = SMARTRequestsAuth(CallableTokenProvider(same, sandbox.iss))
    response = session.get(f"{sandbox.iss}/Patient/{PATIENT}")
    assert response.status_code == 401 and response.history == []


# --- a real hub: a kernel that still holds an older launch's token -----------------------


@dataclass
class World:
    hub: Hub
    sandbox: SandboxProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Hour-long tokens, so the kernel's cached token is still unexpired when refused."""
    work: Path = tmp_path_factory.mktemp("refused-twice")
    port = free_port()
    client = {
        "client_id": "hub-public",
        "type": "public",
        "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
    }
    with run_sandbox(work / "sandbox", [client]) as sandbox:
        # user/*.rs: a read keeps its meaning when the retry's token is another launch's
        scope = "openid fhirUser launch offline_access user/*.rs"
        issuers = {
            sandbox.iss: {"client_id": "hub-public", "client_auth": "public", "scope": scope}
        }
        # Each test makes one forced refresh for the same practitioner; without this the
        # second test would meet the (per-user) rate limit the first one set off.
        options = {"forced_refresh_interval": 0.0}
        with run_hub(work / "hub", issuers, port=port, authenticator=options) as hub:
            yield World(hub, sandbox)


def _launch(world: World, patient: str) -> str:
    with Browser() as browser:
        answer = ehr_launch(browser, world.sandbox, world.hub, patient)
        assert answer.status_code == 302, answer.text[:1000]
    users = world.hub.api(world.hub.admin_token).get("/users").json()
    names = [u["name"] for u in users if u["name"].endswith(f"-{world.sandbox.port}-fhir")]
    assert len(names) == 1
    return str(names[0])


def _stale_kernel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> tuple[SMARTClient, str, dict[str, Any]]:
    """A kernel connected after a launch for patient 1, then a new launch for patient 2.

    Returns the client (still holding launch 1's token), the user name and the
    hub's auth_state after launch 2.
    """
    name = _launch(world, "patient-00001")
    api_token = world.hub.user_token(name)
    SEEN_SECRETS.add(api_token)
    monkeypatch.setenv("SMART_TOKEN_API_URL", f"{world.hub.url}/hub/api/smart/token")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", api_token)
    fhir = connect(show_banner=False)
    assert fhir.context.patient == "patient-00001"
    old = fhir.provider.get().access_token
    assert _launch(world, "patient-00002") == name
    state = world.hub.auth_state(name)
    SEEN_SECRETS.update(str(state[k]) for k in ("access_token", "refresh_token") if state.get(k))
    assert state["patient"] == "patient-00002" and state["access_token"] != old
    assert fhir.provider.get().access_token == old  # the kernel has not looked yet
    return fhir, name, state


@pytest.mark.slow
def test_stale_kernel_after_consent_withdrawn_gets_reauthentication_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fhir, _name, state = _stale_kernel(world, monkeypatch)
    with fhir:
        _withdraw_consent(world.sandbox, str(state["fhirUser"]))  # both launches' grants
        # old token: 401, reported; the hub hands out launch 2's token: 401 too, reported;
        # the hub's forced refresh is refused by the EHR: sign in again, in this very call
        with pytest.raises(ReauthenticationRequired) as raised:
            fhir.read("Patient", "patient-00001")
        assert raised.value.login_url == f"{world.hub.url}/hub/oauth_login"
    log = world.hub.log_text()
    assert "refused by the EHR (forced" in log


@pytest.mark.slow
def test_stale_kernel_whose_new_token_was_revoked_reads_with_a_refreshed_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fhir, name, state = _stale_kernel(world, monkeypatch)
    with fhir:
        old = fhir.provider.get().access_token
        # launch 1's token and launch 2's access token (not its grant) stop working
        _revoke_public(world.sandbox, old)
        _revoke_public(world.sandbox, str(state["access_token"]))
        # 401, 401, then the hub's freshly refreshed token (launch 2's context)
        assert fhir.read("Patient", "patient-00001")["id"] == "patient-00001"
        assert fhir.context.patient == "patient-00002"
        now = fhir.provider.get().access_token
        SEEN_SECRETS.add(now)
        assert now not in (old, state["access_token"])
    assert world.hub.auth_state(name)["access_token"] == now


def _revoke_public(sandbox: SandboxProcess, token: str) -> None:
    response = httpx.post(
        f"{sandbox.origin}/auth/revoke", data={"token": token, "client_id": "hub-public"}
    )
    assert response.status_code == 200, response.text[:500]
    assert (
        httpx.get(
            f"{sandbox.iss}/Patient/{PATIENT}", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 401
    )


def _withdraw_consent(sandbox: SandboxProcess, fhir_user: str) -> None:
    """The EHR's sessions page: revoke every grant the practitioner approved."""
    with httpx.Client(base_url=sandbox.origin, timeout=30) as ehr:
        page = ehr.get("/ehr/sessions").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf, page[:1000]
        answer = ehr.post("/ehr/revoke", data={"csrf_token": csrf.group(1), "user": fhir_user})
        assert answer.status_code == 303, answer.text[:1000]


def test_no_secret_in_the_hub_and_sandbox_logs(world: World) -> None:
    hub_log = world.hub.log_text()
    sandbox_log = world.sandbox.log_text()
    leaked = [s[:6] for s in SEEN_SECRETS if s and (s in hub_log or s in sandbox_log)]
    assert not leaked
