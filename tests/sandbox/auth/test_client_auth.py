"""private_key_jwt (RS384, ES384, jwks and jwks_uri) and Backend Services."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey
from leak_scan import Ledger
from sandbox_process import SandboxProcess

from .conftest import (
    EC_KEY,
    ROTATION_NEW_KEY,
    ROTATION_OLD_KEY,
    RS_KEY,
    SYMMETRIC_SECRET,
    URI_EC_KEY,
    URI_KEY,
    JWKSServer,
    public_jwks,
)
from .flow import ASSERTION_TYPE, assertion, authorize, exchange, jwt_auth

SCOPE = "openid fhirUser launch/patient patient/*.rs offline_access"


def token_url(sbx: SandboxProcess) -> str:
    return f"{sbx.origin}/auth/token"


def backend_token(
    http: httpx.Client, client_assertion: str, scope: str = "system/*.rs"
) -> httpx.Response:
    return http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion,
        },
    )


@pytest.mark.parametrize(("key", "alg"), [(RS_KEY, "RS384"), (EC_KEY, "ES384")])
def test_asymmetric_client_code_flow(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger, key: RSAKey | ECKey, alg: str
) -> None:
    auth = authorize(http, sbx.iss, "app-asymmetric", SCOPE)
    signed = assertion(key, "app-asymmetric", token_url(sbx), alg=alg)
    secret_scan.add(auth.code, signed)
    response = exchange(http, auth, "app-asymmetric", client_auth=jwt_auth(signed))
    assert response.status_code == 200, response.text
    body = response.json()
    secret_scan.add(body["access_token"], body["refresh_token"])
    # refresh re-authenticates with a fresh assertion
    refreshed = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            **jwt_auth(assertion(key, "app-asymmetric", token_url(sbx), alg=alg))["data"],
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    secret_scan.add(refreshed.json()["access_token"], refreshed.json()["refresh_token"])


@pytest.mark.parametrize(("key", "alg"), [(RS_KEY, "RS384"), (EC_KEY, "ES384")])
def test_backend_services_with_system_scopes(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger, key: RSAKey | ECKey, alg: str
) -> None:
    signed = assertion(key, "backend", token_url(sbx), alg=alg)
    secret_scan.add(signed)
    response = backend_token(http, signed, "system/Patient.rs system/Observation.rs")
    assert response.status_code == 200, response.text
    body = response.json()
    secret_scan.add(body["access_token"])
    assert body["scope"] == "system/Patient.rs system/Observation.rs"
    assert body["expires_in"] <= 300
    assert "refresh_token" not in body
    assert "patient" not in body
    patient = http.get("/ehr").text.split('name="patient" value="')[1].split('"')[0]
    read = http.get(
        f"/fhir/Patient/{patient}", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert read.status_code == 200


def test_backend_services_refuse_non_system_scopes(http: httpx.Client, sbx: SandboxProcess) -> None:
    response = backend_token(
        http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384"), "patient/*.rs user/*.rs"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_backend_services_only_for_clients_registered_with_system_scopes(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    """An app registered for people (no scope limit, no ``system/``) cannot read as a backend."""
    by_assertion = backend_token(
        http, assertion(RS_KEY, "app-asymmetric", token_url(sbx), alg="RS384")
    )
    by_secret = http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=("app-symmetric", SYMMETRIC_SECRET),
    )
    for response in (by_assertion, by_secret):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "unauthorized_client"
        assert "registered with 'system/' scopes" in response.json()["error_description"]
    registered = backend_token(http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384"))
    assert registered.status_code == 200, registered.text


def test_backend_services_refuse_public_clients(http: httpx.Client) -> None:
    response = http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_id": "app-public",
        },
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("invalid_client", "unauthorized_client")


def test_jwks_uri_client(http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger) -> None:
    signed = assertion(URI_KEY, "backend-uri", token_url(sbx), alg="RS384")
    secret_scan.add(signed)
    response = backend_token(http, signed, "system/Patient.rs")
    assert response.status_code == 200, response.text
    secret_scan.add(response.json()["access_token"])
    # a key not in the published set is refused
    other = RSAKey.generate_key(2048, parameters={"kid": URI_KEY.kid}, private=True)
    refused = backend_token(
        http, assertion(other, "backend-uri", token_url(sbx), alg="RS384"), "system/Patient.rs"
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_client"


def test_bad_assertion_signature_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": RS_KEY.kid}, private=True)
    response = backend_token(http, assertion(impostor, "backend", token_url(sbx), alg="RS384"))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"


def test_replayed_jti_is_refused(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    jti = str(uuid.uuid4())
    first = backend_token(http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384", jti=jti))
    assert first.status_code == 200
    secret_scan.add(first.json()["access_token"])
    again = backend_token(http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384", jti=jti))
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_client"
    assert "JWT ID" in again.json()["error_description"]


def test_assertion_exp_too_far_ahead_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    response = backend_token(
        http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384", exp_in=3600)
    )
    assert response.status_code == 400
    assert "exp" in response.json()["error_description"]


def test_expired_assertion_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    response = backend_token(
        http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384", exp_in=-600)
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"


def test_wrong_assertion_audience_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    response = backend_token(
        http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS384", aud=f"{sbx.iss}")
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"


def test_rs256_assertion_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    response = backend_token(http, assertion(RS_KEY, "backend", token_url(sbx), alg="RS256"))
    assert response.status_code == 400
    assert "RS384" in response.json()["error_description"]


def test_alg_none_assertion_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    def b64(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "iss": "backend",
        "sub": "backend",
        "aud": token_url(sbx),
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': RS_KEY.kid})}.{b64(claims)}."
    response = backend_token(http, unsigned)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "garbage",
    [
        "not-a-jwt",
        "a.b.c",
        "e30.e30.",
        base64.urlsafe_b64encode(b"[1,2]").decode() + ".x.y",
        "x" * 5000,
    ],
)
def test_garbage_assertions_are_refused(http: httpx.Client, garbage: str) -> None:
    response = backend_token(http, garbage)
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


def test_assertion_naming_unknown_or_public_client_is_refused(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    for client_id in ("nobody", "app-public"):
        response = backend_token(http, assertion(RS_KEY, client_id, token_url(sbx), alg="RS384"))
        assert response.status_code in (400, 401)
        assert response.json()["error"] == "invalid_client"


def test_assertion_with_iss_not_sub_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    from joserfc import jwt

    now = int(time.time())
    claims = {
        "iss": "someone-else",
        "sub": "backend",
        "aud": token_url(sbx),
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    header = {"alg": "RS384", "kid": RS_KEY.kid, "typ": "JWT"}
    signed = jwt.encode(header, claims, RS_KEY, algorithms=["RS384"])
    response = backend_token(http, signed)
    assert response.status_code == 400
    assert "'iss' and 'sub'" in response.json()["error_description"]


def test_jku_other_than_registered_jwks_uri_is_refused(
    http: httpx.Client, sbx: SandboxProcess
) -> None:
    from joserfc import jwt

    now = int(time.time())
    claims = {
        "iss": "backend-uri",
        "sub": "backend-uri",
        "aud": token_url(sbx),
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    header = {
        "alg": "RS384",
        "kid": URI_KEY.kid,
        "typ": "JWT",
        "jku": "http://127.0.0.1:9/evil-jwks.json",
    }
    signed = jwt.encode(header, claims, URI_KEY, algorithms=["RS384"])
    response = backend_token(http, signed, "system/Patient.rs")
    assert response.status_code == 400
    assert "jku" in response.json()["error_description"]


def test_client_id_must_match_the_assertion(http: httpx.Client, sbx: SandboxProcess) -> None:
    signed = assertion(RS_KEY, "backend", token_url(sbx), alg="RS384")
    response = http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_id": "app-asymmetric",
            **jwt_auth(signed)["data"],
        },
    )
    assert response.status_code == 400
    assert "does not match" in response.json()["error_description"]


def test_es384_assertion_with_keys_from_jwks_uri(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    signed = assertion(URI_EC_KEY, "backend-uri", token_url(sbx), alg="ES384")
    secret_scan.add(signed)
    response = backend_token(http, signed, "system/Patient.rs")
    assert response.status_code == 200, response.text
    secret_scan.add(response.json()["access_token"])
    assert response.json()["scope"] == "system/Patient.rs"
    # An EC key of our own under the published kid does not pass.
    impostor = ECKey.generate_key("P-384", parameters={"kid": URI_EC_KEY.kid}, private=True)
    refused = backend_token(
        http, assertion(impostor, "backend-uri", token_url(sbx), alg="ES384"), "system/Patient.rs"
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_client"


@pytest.mark.parametrize("client_id", ["backend-dead-uri", "backend-500-uri", "backend-html-uri"])
def test_unusable_jwks_uri_is_invalid_client_not_a_server_error(
    http: httpx.Client, sbx: SandboxProcess, client_id: str
) -> None:
    """Nothing listening, a 500, or HTML instead of a JWK Set: the client's fault, said so."""
    signed = assertion(URI_KEY, client_id, token_url(sbx), alg="RS384")
    response = backend_token(http, signed, "system/Patient.rs")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client"
    assert "jwks_uri could not be fetched or parsed" in response.json()["error_description"]
    sbx.wait_for_log("cannot fetch client jwks_uri")


def _signed(key: RSAKey | ECKey, alg: str, header: dict[str, str], client_id: str, aud: str) -> str:
    """A compact JWS with exactly ``header`` (joserfc's ``jwt.encode`` would add ``typ``)."""
    from joserfc import jws

    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    payload = json.dumps(claims).encode()
    return jws.serialize_compact({"alg": alg, **header}, payload, key, algorithms=[alg])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"typ": "JWT"}, "needs 'kid'"),
        ({"typ": "JWT", "kid": ""}, "needs 'kid'"),
        ({"kid": RS_KEY.kid}, "needs 'typ'"),
        ({"kid": RS_KEY.kid, "typ": "at+jwt"}, "needs 'typ'"),
        ({"kid": "not-registered", "typ": "JWT"}, "names none of the client's registered keys"),
    ],
)
def test_assertion_header_must_name_kid_and_typ(
    http: httpx.Client, sbx: SandboxProcess, header: dict[str, str], expected: str
) -> None:
    """SMART asks for both; their absence is named, not reported as a bad signature."""
    signed = _signed(RS_KEY, "RS384", header, "backend", token_url(sbx))
    response = backend_token(http, signed)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"
    assert expected in response.json()["error_description"]


def test_a_new_key_on_the_jwks_uri_is_picked_up(
    http: httpx.Client,
    sbx: SandboxProcess,
    rotating_jwks_server: JWKSServer,
    secret_scan: Ledger,
) -> None:
    """Key rotation: an unknown ``kid`` makes the sandbox look at the client's JWKS again."""
    url = token_url(sbx)
    old = backend_token(
        http,
        _signed(
            ROTATION_OLD_KEY, "RS384", {"kid": "rotation-1", "typ": "JWT"}, "backend-rotating", url
        ),
        "system/Patient.rs",
    )
    assert old.status_code == 200, old.text  # the old key set is now cached
    secret_scan.add(old.json()["access_token"])
    rotating_jwks_server.publish(public_jwks(ROTATION_NEW_KEY))
    # The refetch is rate-limited (2 s): wait past it, as a client would between rotations.
    deadline = time.time() + 2.5
    while time.time() < deadline:
        time.sleep(0.1)
    new = backend_token(
        http,
        _signed(
            ROTATION_NEW_KEY, "ES384", {"kid": "rotation-2", "typ": "JWT"}, "backend-rotating", url
        ),
        "system/Patient.rs",
    )
    assert new.status_code == 200, new.text
    secret_scan.add(new.json()["access_token"])
    # The retired key is gone from the published set: its assertions fail now.
    retired = backend_token(
        http,
        _signed(
            ROTATION_OLD_KEY, "RS384", {"kid": "rotation-1", "typ": "JWT"}, "backend-rotating", url
        ),
        "system/Patient.rs",
    )
    assert retired.status_code == 400
    assert "names none of the client's registered keys" in retired.json()["error_description"]
