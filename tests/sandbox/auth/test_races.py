"""Client races must show: a code or refresh token redeemed twice at once ends the grant."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from leak_scan import Ledger
from sandbox_process import SandboxProcess

from .flow import authorize, exchange

SCOPE = "launch/patient patient/*.rs offline_access"


def at_once(count: int, send: Any) -> list[httpx.Response]:
    """Send ``count`` requests released together by a barrier, each on its own connection."""
    barrier = threading.Barrier(count)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=send.base_url, timeout=30) as http:
            barrier.wait()
            response = send(http)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Sender:
    def __init__(self, base_url: str, func: Any) -> None:
        self.base_url = base_url
        self.func = func

    def __call__(self, http: httpx.Client) -> httpx.Response:
        return self.func(http)


def test_concurrent_refreshes_one_wins_and_the_grant_ends(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    tokens = exchange(http, auth, "app-public").json()
    secret_scan.add(auth.code, tokens["access_token"], tokens["refresh_token"])
    data = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": "app-public",
    }
    responses = at_once(4, Sender(sbx.origin, lambda c: c.post("/auth/token", data=data)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) <= 1
    assert all(code in (200, 400) for code in codes)
    for response in responses:
        if response.status_code == 200:
            winner = response.json()
            secret_scan.add(winner["access_token"], winner["refresh_token"])
            # the losers' reuse revoked the whole family, the winner's new tokens included
            read = http.get(
                f"/fhir/Patient/{tokens['patient']}",
                headers={"Authorization": f"Bearer {winner['access_token']}"},
            )
            assert read.status_code == 401
        else:
            assert response.json()["error"] == "invalid_grant"


def test_concurrent_code_redemptions_one_wins_and_its_tokens_are_revoked(
    http: httpx.Client, sbx: SandboxProcess, secret_scan: Ledger
) -> None:
    auth = authorize(http, sbx.iss, "app-public", SCOPE)
    secret_scan.add(auth.code)
    responses = at_once(3, Sender(sbx.origin, lambda c: exchange(c, auth, "app-public")))
    assert [r.status_code for r in responses].count(200) <= 1
    for response in responses:
        if response.status_code == 200:
            body = response.json()
            secret_scan.add(body["access_token"], body["refresh_token"])
            read = http.get(
                f"/fhir/Patient/{body['patient']}",
                headers={"Authorization": f"Bearer {body['access_token']}"},
            )
            assert read.status_code == 401
        else:
            assert response.status_code == 400
            assert response.json()["error"] == "invalid_grant"
