"""The SMART core against a real sandbox EHR process, over HTTP.

Nothing is faked here: discovery, authorize, token, refresh, revocation, JWKS
and FHIR reads all go to a running ``jupyterhub-smart sandbox``. The sandbox
auto-approves, so a standalone launch is: GET authorize, read the 302
``Location``, exchange the code. Client code under test is the core
(:mod:`jupyterhub_smart.smart`); the browser is plain httpx.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from leak_scan import saw, wrote
from sandbox_process import SandboxProcess, run_sandbox

from jupyterhub_smart.smart.authorize import authorization_url, check_response_issuer
from jupyterhub_smart.smart.client_auth import (
    ClientAuthentication,
    ClientSecretBasic,
    PrivateKeyJWT,
    PublicClient,
    client_authentication_for,
)
from jupyterhub_smart.smart.discovery import DiscoveryCache, SMARTConfiguration
from jupyterhub_smart.smart.errors import IDTokenError, TokenEndpointError
from jupyterhub_smart.smart.id_token import JWKSCache, verify_id_token
from jupyterhub_smart.smart.issuers import IssuerPolicy
from jupyterhub_smart.smart.keys import load_private_key, public_jwks, write_key_pair
from jupyterhub_smart.smart.launch_context import LaunchContext, fhir_user_reference
from jupyterhub_smart.smart.pkce import (
    code_challenge_s256,
    new_code_verifier,
    new_nonce,
    new_state,
)
from jupyterhub_smart.smart.scopes import missing_scopes
from jupyterhub_smart.smart.tokens import (
    TokenResponse,
    exchange_code,
    refresh_access_token,
    revoke_token,
)

REDIRECT_URI = "http://127.0.0.1:9/callback"
SECRET = "core-it-secret-7Hq2xV9pL4"
#: RFC 6749 2.3.1: id and secret are encoded before Basic; these characters test that.
ODD_SECRET = "odd: secret%+/&=@ é-9Kq2"
SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs"


@dataclass
class Keys:
    rs384: Path
    es384: Path
    unregistered: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    base = tmp_path_factory.mktemp("keys")
    rs, _ = write_key_pair("RS384", base / "rs", rsa_bits=2048)
    es, _ = write_key_pair("ES384", base / "es")
    stray, _ = write_key_pair("ES384", base / "stray")
    return Keys(rs, es, stray)


@pytest.fixture(scope="module")
def sbx(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[SandboxProcess]:
    clients: list[dict[str, Any]] = [
        {"client_id": "core-public", "type": "public", "redirect_uris": [REDIRECT_URI]},
        {
            "client_id": "core-symmetric",
            "type": "confidential-symmetric",
            "client_secret": SECRET,
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": "core odd:id",
            "type": "confidential-symmetric",
            "client_secret": ODD_SECRET,
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": "core-asymmetric",
            "type": "confidential-asymmetric",
            # both keys registered, as an EHR would hold a hub's JWK Set
            "jwks": public_jwks([load_private_key(keys.rs384), load_private_key(keys.es384)]),
            "redirect_uris": [REDIRECT_URI],
        },
    ]
    with run_sandbox(tmp_path_factory.mktemp("core-sandbox"), clients) as process:
        yield process


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def config(sbx: SandboxProcess, http: httpx.AsyncClient) -> SMARTConfiguration:
    return await DiscoveryCache(http).get(sbx.iss)


@dataclass
class Login:
    tokens: TokenResponse
    claims: dict[str, Any]
    context: LaunchContext
    redirect: dict[str, str]


#: Everything the core and httpx log during this module, at DEBUG, goes to a file that
#: the session's secret scan reads. (httpcore is left out: at DEBUG it logs response
#: headers, so the browser's redirect ``Location`` with its authorization code; never
#: run it at DEBUG in production.)
@pytest.fixture(scope="module", autouse=True)
def client_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("core-client-log") / "client.log"
    wrote(path)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("jupyterhub_smart", "httpx")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield path
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)
    handler.close()


def remember(*values: str | None) -> None:
    """Report secrets to the session's secret scan (it reads the sandbox log and ours)."""
    saw(*values)


async def authorize(
    http: httpx.AsyncClient,
    config: SMARTConfiguration,
    client_id: str,
    scope: str,
    *,
    launch: str | None = None,
) -> tuple[dict[str, str], str, str, str]:
    """GET authorize like a browser; return the redirect's query, verifier, state and nonce."""
    verifier, state, nonce = new_code_verifier(), new_state(), new_nonce()
    url = authorization_url(
        config,
        client_id=client_id,
        redirect_uri=REDIRECT_URI,
        scope=scope,
        state=state,
        code_challenge=code_challenge_s256(verifier),
        nonce=nonce,
        launch=launch,
    )
    response = await http.get(url)
    assert response.status_code in (302, 303), response.text[:500]
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI)
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return query, verifier, state, nonce


async def login(
    http: httpx.AsyncClient,
    config: SMARTConfiguration,
    client: ClientAuthentication,
    scope: str = SCOPE,
    *,
    launch: str | None = None,
) -> Login:
    query, verifier, state, nonce = await authorize(
        http, config, client.client_id, scope, launch=launch
    )
    assert query.get("state") == state, query
    code = query["code"]
    check_response_issuer(config, query.get("iss"))  # RFC 9207 mix-up check
    tokens = await exchange_code(
        http, config, client, code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier
    )
    remember(code, tokens.access_token, tokens.refresh_token, tokens.id_token)
    assert tokens.id_token is not None
    claims = await verify_id_token(
        tokens.id_token,
        config=config,
        client_id=client.client_id,
        jwks=JWKSCache(http),
        nonce=nonce,
    )
    return Login(tokens, claims, LaunchContext.from_token_response(tokens.raw), query)


async def read_patient(
    http: httpx.AsyncClient, config: SMARTConfiguration, token: str, patient: str
) -> int:
    response = await http.get(
        f"{config.fhir_base_url}/Patient/{patient}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
    )
    return response.status_code


async def test_discovery_of_the_real_sandbox(
    sbx: SandboxProcess, config: SMARTConfiguration
) -> None:
    assert config.fhir_base_url == sbx.iss
    assert config.issuer == sbx.origin + "/auth"
    assert config.token_endpoint == sbx.origin + "/auth/token"
    assert config.authorization_endpoint == sbx.origin + "/auth/authorize"
    assert config.jwks_uri and config.revocation_endpoint
    assert "S256" in config.code_challenge_methods_supported
    for capability in ("launch-ehr", "launch-standalone", "sso-openid-connect", "permission-v2"):
        assert config.supports(capability)


async def test_standalone_launch_public_client(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    result = await login(http, config, PublicClient("core-public"))
    tokens = result.tokens
    assert tokens.token_type == "Bearer" and tokens.expires_at is not None
    assert tokens.refresh_token
    assert (
        missing_scopes(["openid", "patient/Observation.rs", "patient/Patient.rs"], tokens.scope)
        == []
    )
    assert result.claims["iss"] == config.issuer and result.claims["aud"] == "core-public"
    fhir_user = fhir_user_reference(result.claims)
    assert fhir_user is not None and fhir_user.startswith("Practitioner/")
    assert result.context.patient is not None  # auto-approve picks the first patient
    assert result.context.to_dict()["patient"] == result.context.patient
    assert await read_patient(http, config, tokens.access_token, result.context.patient) == 200


async def test_ehr_launch_keeps_the_chosen_patient(
    sbx: SandboxProcess, http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    patients = (await http.get(sbx.origin + "/ehr")).text
    ids = re.findall(r'name="patient" value="([^"]+)"', patients)
    assert len(ids) >= 2
    chosen = ids[1]
    app = "http://127.0.0.1:9/launch"
    launch = await http.get(sbx.origin + "/ehr/launch", params={"app": app, "patient": chosen})
    assert launch.status_code in (302, 303)
    query = {k: v[0] for k, v in parse_qs(urlsplit(launch.headers["location"]).query).items()}
    assert query["iss"] == sbx.iss
    assert (
        IssuerPolicy({sbx.iss: {"client_id": "core-public"}}).get(query["iss"]).client_id
        == "core-public"
    )
    result = await login(
        http,
        config,
        PublicClient("core-public"),
        "openid fhirUser launch patient/*.rs",
        launch=query["launch"],
    )
    assert result.context.patient == chosen


async def test_client_secret_basic(http: httpx.AsyncClient, config: SMARTConfiguration) -> None:
    remember(SECRET)
    result = await login(http, config, ClientSecretBasic("core-symmetric", SECRET))
    assert result.claims["aud"] == "core-symmetric"


async def test_client_secret_basic_with_reserved_characters(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    remember(ODD_SECRET)
    result = await login(http, config, ClientSecretBasic("core odd:id", ODD_SECRET))
    assert result.claims["aud"] == "core odd:id"


async def test_wrong_client_secret_is_refused(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    with pytest.raises(TokenEndpointError) as info:
        await login(http, config, ClientSecretBasic("core-symmetric", "wrong-secret-value"))
    assert info.value.oauth_error == "invalid_client" and info.value.status == 502


@pytest.mark.parametrize("which", ["rs384", "es384"])
async def test_private_key_jwt(
    which: str, keys: Keys, sbx: SandboxProcess, http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    pem = getattr(keys, which)
    reg = IssuerPolicy(
        {sbx.iss: {"client_id": "core-asymmetric", "private_key_path": str(pem)}}
    ).get(sbx.iss)
    client = client_authentication_for(reg)
    assert isinstance(client, PrivateKeyJWT) and client.alg == which.upper()
    result = await login(http, config, client)
    assert result.claims["aud"] == "core-asymmetric"
    assert (
        await read_patient(http, config, result.tokens.access_token, result.context.patient or "")
        == 200
    )


async def test_private_key_jwt_with_unregistered_key_is_refused(
    keys: Keys, http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    client = PrivateKeyJWT("core-asymmetric", load_private_key(keys.unregistered))
    with pytest.raises(TokenEndpointError) as info:
        await login(http, config, client)
    assert info.value.oauth_error == "invalid_client"


async def test_code_replay_is_invalid_grant(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    client = PublicClient("core-public")
    query, verifier, _, _ = await authorize(http, config, "core-public", SCOPE)
    remember(query["code"])
    await exchange_code(
        http, config, client, code=query["code"], redirect_uri=REDIRECT_URI, code_verifier=verifier
    )
    with pytest.raises(TokenEndpointError) as info:
        await exchange_code(
            http,
            config,
            client,
            code=query["code"],
            redirect_uri=REDIRECT_URI,
            code_verifier=verifier,
        )
    assert info.value.oauth_error == "invalid_grant" and info.value.status == 400
    assert query["code"] not in str(info.value)


async def test_wrong_pkce_verifier_is_invalid_grant(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    query, _, _, _ = await authorize(http, config, "core-public", SCOPE)
    remember(query["code"])
    with pytest.raises(TokenEndpointError) as info:
        await exchange_code(
            http,
            config,
            PublicClient("core-public"),
            code=query["code"],
            redirect_uri=REDIRECT_URI,
            code_verifier=new_code_verifier(),
        )
    assert info.value.oauth_error == "invalid_grant"


async def test_id_token_nonce_mismatch_with_real_token(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    client = PublicClient("core-public")
    query, verifier, _, _ = await authorize(http, config, "core-public", SCOPE)
    tokens = await exchange_code(
        http, config, client, code=query["code"], redirect_uri=REDIRECT_URI, code_verifier=verifier
    )
    remember(query["code"], tokens.access_token, tokens.refresh_token)
    assert tokens.id_token
    with pytest.raises(IDTokenError, match="nonce"):
        await verify_id_token(
            tokens.id_token,
            config=config,
            client_id="core-public",
            jwks=JWKSCache(http),
            nonce=new_nonce(),
        )
    with pytest.raises(IDTokenError, match="another client"):
        await verify_id_token(
            tokens.id_token,
            config=config,
            client_id="someone-else",
            jwks=JWKSCache(http),
            nonce=None,
        )


async def test_refresh_then_revoke(http: httpx.AsyncClient, config: SMARTConfiguration) -> None:
    client = PublicClient("core-public")
    first = await login(http, config, client)
    assert first.tokens.refresh_token and first.context.patient
    refreshed = await refresh_access_token(
        http, config, client, first.tokens.refresh_token, requested_scope=first.tokens.scope
    )
    remember(refreshed.access_token, refreshed.refresh_token)
    assert refreshed.access_token != first.tokens.access_token
    assert refreshed.scope
    assert await read_patient(http, config, refreshed.access_token, first.context.patient) == 200
    current_refresh = refreshed.refresh_token or first.tokens.refresh_token

    assert await revoke_token(http, config, client, current_refresh) is True
    with pytest.raises(TokenEndpointError) as info:
        await refresh_access_token(http, config, client, current_refresh)
    assert info.value.oauth_error == "invalid_grant" and info.value.status == 400
    assert current_refresh not in str(info.value)


@pytest.mark.parametrize("method", ["public", "client_secret_basic", "private_key_jwt"])
async def test_revocation_works_with_every_client_authentication(
    method: str,
    keys: Keys,
    sbx: SandboxProcess,
    http: httpx.AsyncClient,
    config: SMARTConfiguration,
) -> None:
    """The revocation endpoint takes the same client authentication as the token endpoint:
    a private_key_jwt assertion addressed (aud) to the token endpoint URL."""
    registrations = {
        "public": {"client_id": "core-public"},
        "client_secret_basic": {
            "client_id": "core-symmetric",
            "client_auth": "client_secret_basic",
            "client_secret": SECRET,
        },
        "private_key_jwt": {"client_id": "core-asymmetric", "private_key_path": str(keys.rs384)},
    }
    remember(SECRET)
    client = client_authentication_for(IssuerPolicy({sbx.iss: registrations[method]}).get(sbx.iss))
    tokens = (await login(http, config, client)).tokens
    assert tokens.refresh_token
    assert await revoke_token(http, config, client, tokens.refresh_token) is True
    with pytest.raises(TokenEndpointError) as info:
        await refresh_access_token(http, config, client, tokens.refresh_token)
    assert info.value.oauth_error == "invalid_grant"


async def test_revoked_access_token_stops_working(
    http: httpx.AsyncClient, config: SMARTConfiguration
) -> None:
    client = PublicClient("core-public")
    result = await login(http, config, client)
    patient = result.context.patient or ""
    assert await read_patient(http, config, result.tokens.access_token, patient) == 200
    assert await revoke_token(http, config, client, result.tokens.access_token, "access_token")
    assert await read_patient(http, config, result.tokens.access_token, patient) == 401


async def test_unknown_issuer_is_never_contacted(
    sbx: SandboxProcess, http: httpx.AsyncClient
) -> None:
    policy = IssuerPolicy({sbx.iss: {"client_id": "core-public"}})
    other = sbx.origin + "/other-fhir"
    assert other not in policy
    assert sbx.iss + "/" in policy


async def test_cached_login_makes_one_back_channel_request(sbx: SandboxProcess) -> None:
    """With discovery and JWKS cached, a login costs the EHR exactly one token request."""
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path}")

    async with (
        httpx.AsyncClient(event_hooks={"request": [record]}) as back,
        httpx.AsyncClient() as browser,
    ):
        discovery, jwks = DiscoveryCache(back), JWKSCache(back)
        client = PublicClient("core-public")
        for round_ in range(3):
            seen.clear()
            config = await discovery.get(sbx.iss)
            query, verifier, state, nonce = await authorize(
                browser, config, client.client_id, SCOPE
            )
            assert query["state"] == state
            tokens = await exchange_code(
                back,
                config,
                client,
                code=query["code"],
                redirect_uri=REDIRECT_URI,
                code_verifier=verifier,
            )
            remember(query["code"], tokens.access_token, tokens.refresh_token, tokens.id_token)
            assert tokens.id_token
            await verify_id_token(
                tokens.id_token, config=config, client_id=client.client_id, jwks=jwks, nonce=nonce
            )
            if round_ == 0:
                assert seen == [
                    "GET /fhir/.well-known/smart-configuration",
                    "POST /auth/token",
                    "GET /auth/jwks",
                ]
            else:
                assert seen == ["POST /auth/token"]


async def test_a_login_leaves_no_secret_in_the_sandbox_or_client_log(
    sbx: SandboxProcess, http: httpx.AsyncClient, config: SMARTConfiguration, client_log: Path
) -> None:
    """One login's secret, code and tokens reach neither the EHR's log nor the core's."""
    result = await login(http, config, ClientSecretBasic("core-symmetric", SECRET))
    tokens = result.tokens
    used = [SECRET, result.redirect["code"], tokens.access_token, tokens.refresh_token]
    used.append(tokens.id_token or "")
    sandbox_log = sbx.wait_for_log("POST /auth/token")
    ours = client_log.read_text(encoding="utf-8")
    assert "POST" in ours  # the core's log is captured: the check is not on an empty file
    for name, log in (("sandbox", sandbox_log), ("client", ours)):
        leaked = [s[:8] + "..." for s in used if s and s in log]
        assert leaked == [], f"secrets in the {name} log"
