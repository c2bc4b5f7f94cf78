"""Bad input and attacks against the login: each gets a clear error, a log entry, and the
hub keeps serving."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from hub_process import Browser, Hub, launch_until_callback, location, patient_ids, query
from joserfc import jwt
from joserfc.jwk import KeySet

from .conftest import EvilEnv, SmartEnv


def _still_serving(hub: Hub) -> None:
    assert hub.alive()


@contextmanager
def _one_log_entry(hub: Hub, marker: str) -> Iterator[None]:
    """The block adds exactly one hub log line containing ``marker``; the hub still serves."""
    before = hub.log_text().count(marker)
    yield
    assert hub.log_text().count(marker) == before + 1, hub.log_text()[-3000:]
    _still_serving(hub)


def _start(browser: Browser, hub: Hub, iss: str, **params: str) -> dict[str, str]:
    """Start a login at the hub; the authorize request's parameters."""
    response = browser.get(hub.login_url, params={"iss": iss, **params})
    assert response.status_code == 302, response.text[:2000]
    return query(location(response))


def _callback(browser: Browser, hub: Hub, **params: str) -> httpx.Response:
    return browser.get(hub.callback_url, params=params)


# ---------------------------------------------------------------- issuer


def test_unknown_issuer_gets_a_400_page_and_no_request(evil_env: EvilEnv) -> None:
    hub, evil = evil_env.hub, evil_env.evil
    unknown = evil.origin + "/other-fhir"
    with _one_log_entry(hub, "refused (400 unknown_issuer)"), Browser() as browser:
        response = browser.get(hub.login_url, params={"iss": unknown, "launch": "abc"})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "not registered with the EHR" in response.text and unknown in response.text
    assert not [p for p in evil.requests if p.startswith("/other-fhir")]
    assert "unknown_issuer" in hub.log_text()
    _still_serving(hub)


def _refused_issuers(hub: Hub) -> list[str]:
    """The issuer named by each issuer-refused record of the hub's audit trail."""
    found = []
    for line in hub.audit_path.read_text().splitlines():
        record = json.loads(line)
        if record["subtype"][0]["code"] != "issuer-refused":
            continue
        found += [
            e["what"]["identifier"]["value"]
            for e in record.get("entity", [])
            if "identifier" in e.get("what", {})
        ]
    return found


def test_issuer_refused_records_which_issuer_clipped(evil_env: EvilEnv) -> None:
    """The audit trail says which issuer was refused; a long one is clipped, not stored whole."""
    hub, evil = evil_env.hub, evil_env.evil
    unknown = evil.origin + "/refused-" + secrets.token_hex(4)
    long = "https://forged.example/" + "a" * 1900
    with Browser() as browser:
        for iss in (unknown, long, "https://user@ehr.example/fhir"):
            assert browser.get(hub.login_url, params={"iss": iss}).status_code == 400
    refused = _refused_issuers(hub)
    assert unknown in refused
    assert "https://user@ehr.example/fhir" in refused  # malformed ones are named too
    clipped = [r for r in refused if r.startswith("https://forged.example/aaa")]
    assert clipped and all(len(r) <= 256 for r in clipped) and long not in refused
    _still_serving(hub)


@pytest.mark.parametrize("variant", ["trailing_slash", "upper_host"])
def test_issuer_spelling_is_normalised_not_a_bypass(smart_env: SmartEnv, variant: str) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    iss = (
        sandbox.iss + "/"
        if variant == "trailing_slash"
        else sandbox.iss.replace("http://127.0.0.1", "HTTP://127.0.0.1")
    )
    with Browser() as browser:
        start = browser.get(hub.login_url, params={"iss": iss})
        assert start.status_code == 302, start.text[:2000]
        params = query(location(start))
        assert params["aud"] == sandbox.iss  # the configured spelling, not the attacker's
        hop = browser.follow(location(start), stop_at=hub.callback_url)
        answer = browser.get(location(hop))
        assert answer.status_code == 302, answer.text[:2000]
        whoami = browser.get(f"{hub.url}/hub/api/user")  # the browser's session, via cookie
    # the same user (and issuer) as the canonical spelling gives: no second identity
    name = whoami.json()["name"]
    assert name.endswith(f"@127.0.0.1-{sandbox.port}-fhir")
    assert hub.auth_state(name)["iss"] == sandbox.iss


def test_other_case_in_path_is_another_issuer(smart_env: SmartEnv) -> None:
    with Browser() as browser:
        response = browser.get(
            smart_env.hub.login_url,
            params={"iss": smart_env.public.iss.upper().replace("HTTP://", "http://")},
        )
    assert response.status_code == 400


def test_launch_without_iss_is_refused(smart_env: SmartEnv) -> None:
    with Browser() as browser:
        response = browser.get(smart_env.hub.login_url, params={"launch": "xyz"})
    assert response.status_code == 400 and "no &#39;iss&#39;" in response.text


def test_discovery_missing_fields_is_a_502_page(evil_env: EvilEnv) -> None:
    marker = "refused (502 discovery_failed)"
    with _one_log_entry(evil_env.hub, marker), Browser() as browser:
        response = browser.get(evil_env.hub.login_url, params={"iss": evil_env.evil.broken_iss})
    assert response.status_code == 502
    assert "token_endpoint" in response.text
    assert "discovery_failed" in evil_env.hub.log_text()
    _still_serving(evil_env.hub)


# ---------------------------------------------------------------- state


def test_state_missing(smart_env: SmartEnv) -> None:
    with _one_log_entry(smart_env.hub, "refused (400 missing_state)"), Browser() as browser:
        response = _callback(browser, smart_env.hub, code=secrets.token_urlsafe(16))
    assert response.status_code == 400 and "no &#39;state&#39;" in response.text
    assert "Launch the app again" in response.text


def test_state_forged(smart_env: SmartEnv) -> None:
    marker = "refused (400 invalid_state)"
    with _one_log_entry(smart_env.hub, marker), Browser() as browser:
        _start(browser, smart_env.hub, smart_env.public.iss)
        response = _callback(
            browser, smart_env.hub, code=secrets.token_urlsafe(16), state=secrets.token_urlsafe(32)
        )
    assert response.status_code == 400 and "Launch the app again" in response.text


def test_callback_replayed_and_other_browser(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        callback = launch_until_callback(browser, sandbox, hub, patient_ids(sandbox)[0])
        with (
            _one_log_entry(hub, "refused (400 invalid_state)"),
            Browser() as stranger,  # the authorization response stolen by another browser
        ):
            stolen = stranger.get(callback)
        assert stolen.status_code == 400 and "another browser" in stolen.text
        # consumed: even the right browser cannot use it now (replay)
        with _one_log_entry(hub, "refused (400 invalid_state)"):
            replay = browser.get(callback)
        assert replay.status_code == 400 and "already used" in replay.text
        assert "Launch the app again" in replay.text


def test_state_replayed_after_a_successful_login(smart_env: SmartEnv) -> None:
    """The callback that signed the user in, sent again by the same browser: refused."""
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        callback = launch_until_callback(browser, sandbox, hub, patient_ids(sandbox)[0])
        assert browser.get(callback).status_code == 302  # signed in
        with _one_log_entry(hub, "refused (400 invalid_state)"):
            replay = browser.get(callback)
    assert replay.status_code == 400 and "already used" in replay.text


def test_code_replayed_with_a_fresh_state_fails_at_the_ehr(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        callback = launch_until_callback(browser, sandbox, hub, patient_ids(sandbox)[0])
        first = query(callback)
        assert browser.get(callback).status_code == 302
        params = _start(browser, hub, sandbox.iss)
        response = _callback(
            browser, hub, code=first["code"], state=params["state"], iss=first["iss"]
        )
    assert response.status_code == 400
    assert "invalid_grant" in response.text
    _still_serving(hub)


def test_ehr_error_is_shown_in_words(smart_env: SmartEnv) -> None:
    with Browser() as browser:
        params = _start(browser, smart_env.hub, smart_env.public.iss)
        response = _callback(
            browser,
            smart_env.hub,
            state=params["state"],
            error="access_denied",
            error_description="<script>alert(1)</script>",
        )
    assert response.status_code == 403
    assert "You declined access in the EHR" in response.text
    assert "<script>alert(1)" not in response.text


def test_rfc9207_iss_mismatch_is_refused(smart_env: SmartEnv) -> None:
    with Browser() as browser:
        params = _start(browser, smart_env.hub, smart_env.public.iss)
        response = _callback(
            browser,
            smart_env.hub,
            state=params["state"],
            code=secrets.token_urlsafe(16),
            iss="https://attacker.example/",
        )
    assert response.status_code == 400 and "mix-up" in response.text


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "\\\\evil.example",
        "/%2F%2Fevil.example",
        "https://evil.example/x",
        "/\\evil.example",
    ],
)
def test_next_off_site_is_dropped(smart_env: SmartEnv, target: str) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        with _one_log_entry(hub, "ignoring an off-site 'next' parameter"):
            response = browser.get(hub.login_url, params={"iss": sandbox.iss, "next": target})
        hop = browser.follow(location(response), stop_at=hub.callback_url)
        answer = browser.get(location(hop))
    assert answer.status_code == 302
    assert location(answer) == f"{hub.url}/hub/home"


def test_next_on_site_is_kept(smart_env: SmartEnv) -> None:
    hub, sandbox = smart_env.hub, smart_env.public
    with Browser() as browser:
        response = browser.get(hub.login_url, params={"iss": sandbox.iss, "next": "/hub/token"})
        hop = browser.follow(location(response), stop_at=hub.callback_url)
        answer = browser.get(location(hop))
    assert location(answer) == f"{hub.url}/hub/token"


# ---------------------------------------------------------------- the evil EHR


def _evil_login(
    env: EvilEnv,
    mode: str,
    iss: str | None = None,
    callback: dict[str, str] | None = None,
) -> httpx.Response:
    """A login at the evil EHR: start at the hub, then its callback as the EHR would send it."""
    env.evil.mode = mode
    with Browser() as browser:
        params = _start(browser, env.hub, iss or env.evil.iss)
        env.evil.nonce = params["nonce"]
        return _callback(
            browser,
            env.hub,
            code="evil-code-" + secrets.token_urlsafe(12),
            state=params["state"],
            **(callback or {}),
        )


def test_evil_ehr_control_login_works(evil_env: EvilEnv) -> None:
    """The control: with nothing forged the login succeeds, so the refusals below mean something."""
    response = _evil_login(evil_env, "good")
    assert response.status_code == 302, response.text[:2000]
    form = evil_env.evil.received[-1]
    assert form["client_assertion_type"].endswith("jwt-bearer") and form["code_verifier"]


def test_private_key_jwt_assertion_and_pkce_as_the_ehr_sees_them(evil_env: EvilEnv) -> None:
    """What reached the token endpoint: an ES384 assertion that verifies with the hub's
    published JWKS (kid, aud = token URL, <= 5 minutes, fresh jti) and the PKCE verifier of
    this very authorize request."""
    hub, evil = evil_env.hub, evil_env.evil
    evil.mode = "good"
    with Browser() as browser:
        params = _start(browser, hub, evil.iss)
        evil.nonce = params["nonce"]
        code = "evil-code-" + secrets.token_urlsafe(12)
        assert _callback(browser, hub, code=code, state=params["state"]).status_code == 302
    form = next(f for f in reversed(evil.received) if f.get("code") == code)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest())
    assert params["code_challenge_method"] == "S256"
    assert challenge.rstrip(b"=").decode() == params["code_challenge"]
    published = KeySet.import_key_set(httpx.get(f"{hub.url}/hub/smart/jwks.json").json())
    token = jwt.decode(form["client_assertion"], published, algorithms=["ES384"])
    assert token.header["alg"] == "ES384" and token.header["kid"]
    claims = token.claims
    assert claims["iss"] == claims["sub"] == evil.client_id
    assert claims["aud"] == evil.origin + "/token"
    assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["jti"]
    earlier = [f.get("client_assertion") for f in evil.received if f.get("code") != code]
    jtis = {jwt.decode(a, published, algorithms=["ES384"]).claims["jti"] for a in earlier if a}
    assert claims["jti"] not in jtis


def test_client_secret_basic_login(evil_env: EvilEnv) -> None:
    evil = evil_env.evil
    response = _evil_login(evil_env, "good", iss=evil.basic_iss)
    assert response.status_code == 302, response.text[:2000]
    form = evil.received[-1]
    assert form["authorization"].startswith("Basic ") and "client_assertion" not in form


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("bad_signature", 403, "signature"),
        ("alg_none", 403, "algorithm"),
        ("hs256_public_key", 403, "algorithm"),
        ("wrong_aud", 403, "aud"),
        ("expired", 403, "expired"),
        ("wrong_nonce", 403, "nonce"),
        ("wrong_iss", 403, "is not the EHR&#39;s issuer"),
        ("header_keys", 403, "signature does not verify"),
        ("bad_context", 502, "fhirContext"),
        ("low_scope", 403, "patient/*.rs"),
        ("no_patient", 403, "did not choose a patient"),
        ("token_500", 502, "HTTP 500"),
        ("token_timeout", 504, "did not answer"),
        ("token_html", 502, "instead of JSON"),
        ("no_access_token", 502, "no access_token"),
    ],
)
def test_evil_ehr_faults(evil_env: EvilEnv, mode: str, status: int, words: str) -> None:
    marker = f"SMART /hub/oauth_callback refused ({status} "
    before = evil_env.hub.log_text().count(marker)
    response = _evil_login(evil_env, mode)
    assert response.status_code == status, response.text[:2000]
    assert words in response.text
    assert "Error code" in response.text
    assert evil_env.hub.log_text().count(marker) == before + 1  # one log entry for it
    _still_serving(evil_env.hub)


def test_header_keys_are_never_fetched(evil_env: EvilEnv) -> None:
    """An id_token naming its own keys (jku, x5u) is checked against the issuer's jwks_uri only."""
    evil = evil_env.evil
    assert _evil_login(evil_env, "header_keys").status_code == 403
    assert not [p for p in evil.requests if p.startswith("/attacker")]


def test_rfc9207_iss_is_the_authorization_servers_not_the_fhir_base(evil_env: EvilEnv) -> None:
    """The evil EHR's authorization server issuer (its origin) differs from its FHIR base."""
    evil = evil_env.evil
    good = _evil_login(evil_env, "good", callback={"iss": evil.origin})
    assert good.status_code == 302, good.text[:2000]
    with _one_log_entry(evil_env.hub, "refused (400 "):
        mixed = _evil_login(evil_env, "good", callback={"iss": evil.iss})
    assert mixed.status_code == 400 and "mix-up" in mixed.text


def test_every_launch_context_field_lands_in_auth_state(evil_env: EvilEnv) -> None:
    from .evil_ehr import FULL_CONTEXT

    hub, evil = evil_env.hub, evil_env.evil
    response = _evil_login(evil_env, "full_context")
    assert response.status_code == 302, response.text[:2000]
    name = f"practitioner-evil-1@127.0.0.1-{evil.origin.rsplit(':', 1)[1]}-fhir"
    state = hub.auth_state(name)
    required = {
        "iss",
        "fhir_base_url",
        "access_token",
        "refresh_token",
        "expires_at",
        "scope",
        "patient",
        "encounter",
        "fhirUser",
        "need_patient_banner",
        "smart_style_url",
        "fhirContext",
        "intent",
        "tenant",
    }
    assert required <= set(state), required - set(state)
    assert {k: state[k] for k in FULL_CONTEXT} == FULL_CONTEXT
    assert state["iss"] == evil.iss and state["fhir_base_url"] == evil.iss
    assert state["fhirUser"] == "Practitioner/evil-1"
    assert state["scope"] == ["openid", "fhirUser", "launch/patient", "patient/*.rs"]
    assert state["access_token"] == evil.issued[-2] and state["refresh_token"] == evil.issued[-1]
    assert "id_token" not in state  # not kept: nothing needs it after the login


# ---------------------------------------------------------------- malformed requests


def test_callback_without_code_is_a_400_page(evil_env: EvilEnv) -> None:
    hub = evil_env.hub
    with _one_log_entry(hub, "refused (400 missing_code)"), Browser() as browser:
        params = _start(browser, hub, evil_env.evil.iss)
        response = _callback(browser, hub, state=params["state"])
    assert response.status_code == 400 and "no authorization code" in response.text


@pytest.mark.parametrize("launch", ["x" * 3000, "bad\x01launch", "two words"])
def test_unusable_launch_parameter_is_a_400_page(smart_env: SmartEnv, launch: str) -> None:
    hub = smart_env.hub
    with _one_log_entry(hub, "refused (400 invalid_launch)"), Browser() as browser:
        response = browser.get(
            hub.login_url, params={"iss": smart_env.public.iss, "launch": launch}
        )
    assert response.status_code == 400 and "launch" in response.text
    assert "location" not in response.headers


@pytest.mark.parametrize(
    "iss",
    [
        "not a url",
        "javascript:alert(1)",
        "ftp://127.0.0.1/fhir",
        "https://ehr.example/<script>alert(1)</script>",
    ],
)
def test_iss_that_is_not_an_http_url_is_a_400_page(smart_env: SmartEnv, iss: str) -> None:
    hub = smart_env.hub
    with _one_log_entry(hub, "refused (400 unknown_issuer)"), Browser() as browser:
        response = browser.get(hub.login_url, params={"iss": iss})
    assert response.status_code == 400 and "location" not in response.headers
    assert "<script>alert(1)" not in response.text  # named in the page, escaped


def test_a_warm_login_makes_one_back_channel_request(evil_env: EvilEnv) -> None:
    """Discovery and JWKS are cached: a login costs the EHR exactly one token request."""
    evil = evil_env.evil
    assert _evil_login(evil_env, "good").status_code == 302  # warm (or already warm)
    before = len(evil.requests)
    assert _evil_login(evil_env, "good").status_code == 302
    assert evil.requests[before:] == ["/token"]
