"""Token endpoint, refresh rotation, id_token, introspection and revocation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, RSAKey
from leak_scan import Ledger
from sandbox_process import SandboxProcess

from .conftest import SYMMETRIC_SECRET
from .flow import authorize, basic, exchange, patient_ids, pkce_pair

SCOPE = "openid fhirUser launch/patient patient/*.rs offline_access"


def issue(
    http: httpx.Client,
    sbx: SandboxProcess,
    seen: Ledger,
    client_id: str = "app-public",
    scope: str = SCOPE,
    client_auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    auth = authorize(http, sbx.iss, client_id, scope)
    seen.add(auth.code)
    response = exchange(http, auth, client_id, client_auth=client_auth)
    assert response.status_code == 200, response.text
    body = response.json()
    seen.add(*(v for k, v in body.items() if k in ("access_token", "refresh_token", "id_token")))
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refresh(http: httpx.Client, tokens: dict[str, Any]) -> httpx.Response:
    """Use the grant's refresh token as the public test client does."""
    return http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app-public",
        },
    )


def assert_grant_ended(http: httpx.Client, tokens: dict[str, Any]) -> None:
    """Neither the access token nor the refresh token of the grant works any more."""
    read = http.get(f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["access_token"]))
    assert read.status_code == 401
    assert refresh(http, tokens).status_code == 400


def introspect(http: httpx.Client, token: str, client_id: str = "app-public") -> dict[str, Any]:
    response = http.post("/auth/introspect", data={"token": token, "client_id": client_id})
    assert response.status_code == 200, response.text
    return response.json()


def test_wrong_verifier_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    response = exchange(http, auth, "app-public", verifier=pkce_pair()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_missing_verifier_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    data = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": auth.params["redirect_uri"],
        "client_id": "app-public",
    }
    response = http.post("/auth/token", data=data)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_replayed_code_is_refused_and_revokes_its_tokens(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    first = exchange(http, auth, "app-public")
    assert first.status_code == 200
    tokens = first.json()
    secret_scan.add(auth.code, tokens["access_token"], tokens["refresh_token"])
    assert (
        http.get(
            f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["access_token"])
        ).status_code
        == 200
    )
    replay = exchange(http, auth, "app-public")
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert (
        http.get(
            f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["access_token"])
        ).status_code
        == 401
    )
    assert introspect(http, tokens["access_token"]) == {"active": False}
    refreshed = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app-public",
        },
    )
    assert refreshed.status_code == 400


def test_code_is_bound_to_its_client(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    response = exchange(http, auth, "app-limited")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_code_is_bound_to_its_redirect_uri(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    response = exchange(http, auth, "app-public", redirect_uri="http://127.0.0.1:9/other")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_unknown_code_is_refused(http: httpx.Client) -> None:
    response = http.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": "nope",
            "redirect_uri": "http://127.0.0.1:9/callback",
            "code_verifier": "a" * 43,
            "client_id": "app-public",
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_refresh_rotates_and_reuse_revokes_the_grant(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": "app-public",
    }
    second = http.post("/auth/token", data=refresh)
    assert second.status_code == 200, second.text
    rotated = second.json()
    secret_scan.add(rotated["access_token"], rotated["refresh_token"])
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["patient"] == tokens["patient"]
    assert rotated["scope"] == tokens["scope"]
    assert (
        http.get(
            f"/fhir/Patient/{rotated['patient']}", headers=bearer(rotated["access_token"])
        ).status_code
        == 200
    )
    reuse = http.post("/auth/token", data=refresh)
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    # the whole family is gone: the rotated pair too
    assert (
        http.get(
            f"/fhir/Patient/{rotated['patient']}", headers=bearer(rotated["access_token"])
        ).status_code
        == 401
    )
    next_refresh = http.post(
        "/auth/token", data={**refresh, "refresh_token": rotated["refresh_token"]}
    )
    assert next_refresh.status_code == 400


def test_refresh_may_narrow_but_not_widen_scope(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    wider = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app-public",
            "scope": "user/*.rs",
        },
    )
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"
    narrower = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app-public",
            "scope": "patient/*.rs offline_access",
        },
    )
    assert narrower.status_code == 200, narrower.text
    secret_scan.add(narrower.json()["access_token"], narrower.json()["refresh_token"])
    assert narrower.json()["scope"] == "patient/*.rs offline_access"


def test_refresh_token_is_bound_to_its_client(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    response = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app-limited",
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_id_token_claims_and_signature(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    secret_scan.add(auth.code)
    body = exchange(http, auth, "app-public").json()
    secret_scan.add(body["access_token"], body["id_token"])
    config = http.get("/fhir/.well-known/smart-configuration").json()
    keys = KeySet.import_key_set(http.get(config["jwks_uri"]).json())
    token = jwt.decode(body["id_token"], keys, algorithms=["RS256"])
    assert token.header["kid"] in {k.kid for k in keys}
    claims = token.claims
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": config["issuer"]},
        aud={"essential": True, "value": "app-public"},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": auth.nonce},
    )
    registry.validate(claims)
    practitioner = claims["fhirUser"]
    assert practitioner.startswith(f"{sbx.iss}/Practitioner/")
    # a key of our own does not verify it
    with pytest.raises(BadSignatureError):
        jwt.decode(
            body["id_token"],
            RSAKey.generate_key(2048, parameters={"kid": token.header["kid"]}),
            algorithms=["RS256"],
        )


def test_confidential_symmetric_client(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    body = issue(
        http,
        sbx,
        secret_scan,
        "app-symmetric",
        client_auth=basic("app-symmetric", SYMMETRIC_SECRET),
    )
    assert "patient" in body
    auth = authorize(http, sbx.iss, "app-symmetric", SCOPE)
    wrong = exchange(
        http, auth, "app-symmetric", client_auth=basic("app-symmetric", "not-the-secret-0000")
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    # a confidential client may not skip authentication
    unauthenticated = exchange(http, auth, "app-symmetric")
    assert unauthenticated.status_code in (400, 401)
    assert unauthenticated.json()["error"] == "invalid_client"


def test_unknown_client_at_token_endpoint(http: httpx.Client) -> None:
    response = http.post(
        "/auth/token", data={"grant_type": "authorization_code", "code": "x", "client_id": "nobody"}
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


def test_unsupported_grant_type(http: httpx.Client) -> None:
    response = http.post("/auth/token", data={"grant_type": "password", "client_id": "app-public"})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_introspection_reports_smart_fields(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    info = introspect(http, tokens["access_token"])
    assert info["active"] is True
    assert info["client_id"] == "app-public"
    assert info["scope"] == tokens["scope"]
    assert info["patient"] == tokens["patient"]
    assert info["fhirUser"].startswith(f"{sbx.iss}/Practitioner/")
    assert info["sub"].startswith("Practitioner/")
    assert isinstance(info["exp"], int)
    assert info["token_type"] == "Bearer"
    refresh_info = introspect(http, tokens["refresh_token"])
    assert refresh_info["active"] is True
    # another client learns nothing about it
    assert introspect(http, tokens["access_token"], client_id="app-limited") == {"active": False}
    assert introspect(http, "not-a-token") == {"active": False}


def test_introspection_needs_client_authentication(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(
        http,
        sbx,
        secret_scan,
        "app-symmetric",
        client_auth=basic("app-symmetric", SYMMETRIC_SECRET),
    )
    anonymous = http.post("/auth/introspect", data={"token": tokens["access_token"]})
    assert anonymous.status_code in (400, 401)
    assert anonymous.json()["error"] == "invalid_client"
    authenticated = http.post(
        "/auth/introspect",
        data={"token": tokens["access_token"]},
        headers=basic("app-symmetric", SYMMETRIC_SECRET)["headers"],
    )
    assert authenticated.json()["active"] is True


def test_revoked_access_token_stops_working(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    url = f"/fhir/Patient/{tokens['patient']}"
    assert http.get(url, headers=bearer(tokens["access_token"])).status_code == 200
    revoked = http.post(
        "/auth/revoke", data={"token": tokens["access_token"], "client_id": "app-public"}
    )
    assert revoked.status_code == 200
    assert http.get(url, headers=bearer(tokens["access_token"])).status_code == 401
    assert introspect(http, tokens["access_token"]) == {"active": False}
    # the refresh token still works (only the access token was revoked)
    refreshed = refresh(http, tokens)
    assert refreshed.status_code == 200
    secret_scan.add(refreshed.json()["access_token"], refreshed.json()["refresh_token"])


def test_revoked_refresh_token_ends_the_grant(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    revoked = http.post(
        "/auth/revoke",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": "app-public",
        },
    )
    assert revoked.status_code == 200
    assert_grant_ended(http, tokens)


def test_ehr_sessions_page_revokes_a_grant(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    page = http.get("/ehr/sessions")
    assert page.status_code == 200
    assert "app-public" in page.text
    assert tokens["access_token"] not in page.text
    import re

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    family = re.findall(r'name="grant" value="([^"]+)"', page.text)
    assert csrf and family
    # without the CSRF token: refused
    assert http.post("/ehr/revoke", data={"grant": family[0]}).status_code == 400
    for grant in family:
        done = http.post("/ehr/revoke", data={"grant": grant, "csrf_token": csrf.group(1)})
        assert done.status_code == 303
    assert (
        http.get(
            f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["access_token"])
        ).status_code
        == 401
    )


def test_token_responses_are_readable_by_browser_apps(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    secret_scan.add(auth.code)
    response = exchange(http, auth, "app-public")
    secret_scan.add(
        *(
            v
            for k, v in response.json().items()
            if k in ("access_token", "refresh_token", "id_token")
        )
    )
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


def test_patient_token_cannot_read_another_patient(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    others = [p for p in patient_ids(http) if p != tokens["patient"]]
    response = http.get(f"/fhir/Patient/{others[0]}", headers=bearer(tokens["access_token"]))
    # 404, not 403: a patient-scoped token must not learn that the other record exists.
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    missing = http.get("/fhir/Patient/no-such-patient", headers=bearer(tokens["access_token"]))
    assert missing.status_code == 404
    diagnostics = [r.json()["issue"][0]["diagnostics"] for r in (response, missing)]
    assert diagnostics == [
        f"Patient/{others[0]} is not known or not visible to this token",
        "Patient/no-such-patient is not known or not visible to this token",
    ]


def test_ehr_revokes_every_grant_of_a_user(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    import re

    first = issue(http, sbx, secret_scan)
    second = issue(http, sbx, secret_scan, "app-limited", scope="launch/patient patient/Patient.rs")
    user = introspect(http, first["access_token"])["sub"]
    page = http.get("/ehr/sessions")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf and f'name="user" value="{user}"' in page.text
    done = http.post("/ehr/revoke", data={"user": user, "csrf_token": csrf.group(1)})
    assert done.status_code == 303
    for tokens in (first, second):
        read = http.get(
            f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["access_token"])
        )
        assert read.status_code == 401


def test_client_secret_in_the_body_is_refused(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    """client_secret_basic only: a secret in the form (client_secret_post) is not accepted."""
    auth = authorize(http, sbx.iss, "app-symmetric", SCOPE)
    secret_scan.add(auth.code)
    response = exchange(
        http,
        auth,
        "app-symmetric",
        client_auth={"data": {"client_id": "app-symmetric", "client_secret": SYMMETRIC_SECRET}},
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"
    assert SYMMETRIC_SECRET not in response.text


def test_a_wrong_token_type_hint_does_not_stop_the_search(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    """RFC 7662/7009 §2.1: a hint that misses MUST widen the search, never end it.

    Otherwise introspection calls a live token inactive, and revocation answers
    200 while the token keeps working.
    """
    tokens = issue(http, sbx, secret_scan)
    info = http.post(
        "/auth/introspect",
        data={
            "token": tokens["access_token"],
            "token_type_hint": "refresh_token",
            "client_id": "app-public",
        },
    ).json()
    assert info["active"] is True
    assert info["patient"] == tokens["patient"]
    revoked = http.post(
        "/auth/revoke",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "access_token",
            "client_id": "app-public",
        },
    )
    assert revoked.status_code == 200
    # The refresh token was found despite the hint, so its whole grant ended.
    assert_grant_ended(http, tokens)


def test_a_refresh_token_is_not_a_bearer_token(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    """The widened search is for introspection and revocation only, never for FHIR access."""
    tokens = issue(http, sbx, secret_scan)
    response = http.get(
        f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["refresh_token"])
    )
    assert response.status_code == 401
    reused = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["access_token"],
            "client_id": "app-public",
        },
    )
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"


def test_another_client_cannot_revoke_or_introspect_a_token(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    tokens = issue(http, sbx, secret_scan)
    for token in (tokens["access_token"], tokens["refresh_token"]):
        refused = http.post(
            "/auth/revoke",
            data={"token": token},
            headers=basic("app-symmetric", SYMMETRIC_SECRET)["headers"],
        )
        assert 400 <= refused.status_code < 500
        assert introspect(http, token, client_id="app-other") == {"active": False}
    read = http.get(f"/fhir/Patient/{tokens['patient']}", headers=bearer(tokens["access_token"]))
    assert read.status_code == 200
    assert introspect(http, tokens["refresh_token"])["active"] is True
