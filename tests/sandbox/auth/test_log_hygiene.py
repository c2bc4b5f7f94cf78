"""No code, token, verifier, assertion or secret of a flow reaches the sandbox log.

The secrets of every other test are looked for in every sandbox log by the
session's ``secret_scan`` when the session ends.
"""

from __future__ import annotations

import httpx
from sandbox_process import SandboxProcess

from .conftest import RS_KEY, SYMMETRIC_SECRET
from .flow import assertion, authorize, basic, exchange, jwt_auth


def test_log_holds_none_of_the_secrets_used(http: httpx.Client, sbx: SandboxProcess) -> None:
    # A flow of our own, so this test means something when run alone, including failures.
    auth = authorize(
        http, sbx.iss, "app-symmetric", "openid fhirUser launch/patient patient/*.rs offline_access"
    )
    body = exchange(
        http, auth, "app-symmetric", client_auth=basic("app-symmetric", SYMMETRIC_SECRET)
    ).json()
    wrong = exchange(
        http, auth, "app-symmetric", client_auth=basic("app-symmetric", "wrong-secret-1234567")
    )
    assert wrong.status_code == 401  # wrong secret, checked before the (replayed) code
    signed = assertion(RS_KEY, "backend", f"{sbx.origin}/auth/token", alg="RS384")
    http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            **jwt_auth(signed)["data"],
        },
    )
    http.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            **jwt_auth(signed)["data"],
        },
    )
    used = [
        SYMMETRIC_SECRET,
        auth.code,
        auth.verifier,
        auth.state,
        body["access_token"],
        body["refresh_token"],
        body["id_token"],
        "wrong-secret-1234567",
        signed,
    ]
    log = sbx.log_text()
    assert "POST /auth/token" in log  # the log is the right one and not empty
    leaked = [s[:12] + "..." for s in used if s and s in log]
    assert not leaked, f"secrets found in the sandbox log: {leaked}"
    # nor pieces of them long enough to matter (e.g. a JWT's signature part)
    for secret in used:
        for part in secret.split("."):
            if len(part) >= 20:
                assert part not in log
