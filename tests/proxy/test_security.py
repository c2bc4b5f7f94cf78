"""The proxy as an attacker meets it: escapes, injected headers, other tokens, writes, redirects.

Each refusal is checked on both sides: the caller's answer, and the EHR side
(the front in front of the sandbox records every request it receives), so a
test fails if anything reached the EHR that should not have.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from .world import ProxyWorld, details, proxy_records, wait_records


def raw_status(world: ProxyWorld, target: str, token: str | None = None) -> int:
    """Send ``GET <target>`` exactly as written (no client normalises it); the status."""
    parts = urlsplit(world.proxy_root)
    headers = f"Host: {parts.netloc}\r\nConnection: close\r\n"
    if token:
        headers += f"Authorization: token {token}\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\n{headers}\r\n".encode("latin-1"))
        status_line = sock.makefile("rb").readline().decode("latin-1")
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "escape",
    [
        "Patient/../../auth/token",
        "Patient/..;/..;/auth/token",
        "..%2f..%2fauth%2ftoken",
        "Patient/%2e%2e/%2e%2e/auth/token",
        "Patient/%252e%252e/auth",
        "Patient%5c..%5cauth",
        "Patient//..//auth",
        "Patient/1%0d%0aX-Injected:%20yes",
    ],
)
def test_path_escapes_never_reach_the_ehr(proxy_world: ProxyWorld, escape: str) -> None:
    seen = len(proxy_world.front.received)
    path = urlsplit(proxy_world.base).path
    assert raw_status(proxy_world, f"{path}/{escape}", proxy_world.token) == 400
    assert len(proxy_world.front.received) == seen


def test_absolute_form_and_other_hosts_are_refused(proxy_world: ProxyWorld) -> None:
    seen = len(proxy_world.front.received)
    path = urlsplit(proxy_world.base).path
    front = urlsplit(proxy_world.front.origin).netloc
    for target in (
        f"http://{front}{path}/Patient",
        f"http://evil.example{path}/Patient",
        f"{path}/http://evil.example/fhir/Patient",
    ):
        assert raw_status(proxy_world, target, proxy_world.token) in (400, 404)
    assert len(proxy_world.front.received) == seen


def test_injected_headers_do_not_reach_the_ehr(proxy_world: ProxyWorld) -> None:
    with httpx.Client(timeout=60, trust_env=False) as client:
        answer = client.get(
            f"{proxy_world.base}/Patient/{proxy_world.patient}",
            params={"note": "a\r\nX-Injected: yes"},
            headers={
                "Authorization": f"Bearer {proxy_world.token}",
                "Cookie": "jupyterhub-session-id=stolen",
                "X-Forwarded-For": "10.9.9.9",
                "X-Forwarded-Host": "evil.example",
                "Forwarded": "for=10.9.9.9;host=evil.example",
                "X-Injected": "yes",
                "Accept": "application/fhir+json",
            },
        )
    assert answer.status_code == 200, answer.text
    assert "set-cookie" not in answer.headers
    got = {k.lower(): v for k, v in proxy_world.front.received[-1]["headers"].items()}
    assert got["authorization"].startswith("Bearer ")
    assert proxy_world.token not in got["authorization"]
    for name in ("cookie", "x-forwarded-for", "x-forwarded-host", "forwarded", "x-injected"):
        assert name not in got
    assert got["accept"] == "application/fhir+json"


def test_no_token_or_a_cookie_only_is_refused(proxy_world: ProxyWorld) -> None:
    seen = len(proxy_world.front.received)
    with proxy_world.client(token="") as client:
        bare = client.get("Patient")
        cookie = client.get("Patient", headers={"Cookie": "jupyterhub-session-id=x"})
        in_url = client.get("Patient", params={"token": proxy_world.token})
    assert bare.status_code == cookie.status_code == in_url.status_code == 401
    assert bare.json()["error"] == "authentication_required"
    assert len(proxy_world.front.received) == seen


def test_another_users_token_reaches_only_that_users_session(proxy_world: ProxyWorld) -> None:
    """Bob has a hub account and a valid token but never signed in at the EHR."""
    bob = proxy_world.hub.user_token("bob-no-ehr", create=True)
    seen = len(proxy_world.front.received)
    with proxy_world.client(bob) as client:
        answer = client.get(f"Patient/{proxy_world.patient}")
    assert answer.status_code == 401
    assert answer.json()["error"] == "reauthentication_required"
    assert "oauth_login" in answer.json()["login_url"]
    assert len(proxy_world.front.received) == seen
    with proxy_world.client(proxy_world.hub.admin_token) as client:
        service = client.get(f"Patient/{proxy_world.patient}")
    assert service.status_code == 403
    assert len(proxy_world.front.received) == seen


def test_a_token_without_the_smart_scope_is_refused(proxy_world: ProxyWorld) -> None:
    narrow = proxy_world.hub.user_token(
        proxy_world.user, scopes=[f"read:users:name!user={proxy_world.user}"]
    )
    seen = len(proxy_world.front.received)
    with proxy_world.client(narrow) as client:
        answer = client.get(f"Patient/{proxy_world.patient}")
    assert answer.status_code == 403
    assert answer.json()["error"] == "insufficient_scope"
    assert len(proxy_world.front.received) == seen


def test_a_write_the_scopes_do_not_allow_is_refused_and_recorded(proxy_world: ProxyWorld) -> None:
    before = len(proxy_records(proxy_world))
    seen = len(proxy_world.front.received)
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    with proxy_world.client() as client:
        create = client.post("Observation", json=observation)
        delete = client.delete(f"Patient/{proxy_world.patient}")
    assert create.status_code == delete.status_code == 403
    assert create.json()["error"] == "insufficient_scope"
    assert len(proxy_world.front.received) == seen
    records = wait_records(proxy_world, before + 2)[before:]
    assert [r["action"] for r in records] == ["C", "D"]
    assert all(r["outcome"] == "4" for r in records)
    assert details(records[0])["http-status"] == "403"


def test_a_redirect_to_another_host_is_not_followed(proxy_world: ProxyWorld) -> None:
    with proxy_world.client() as client:
        answer = client.get(f"Patient/{proxy_world.patient}", params={"x-fault": "redirect"})
    assert answer.status_code == 502
    assert answer.json()["error"] == "redirect_refused"
    assert proxy_world.front.other_received == []


def test_a_redirect_within_the_fhir_base_is_rewritten_to_the_proxy(proxy_world: ProxyWorld) -> None:
    with proxy_world.client() as client:
        answer = client.get(f"Patient/{proxy_world.patient}", params={"x-fault": "redirect-base"})
        assert answer.status_code == 302
        location = answer.headers["location"]
        assert location.startswith(proxy_world.base + "/Patient/")
        assert client.get(location).status_code == 200


def test_an_unknown_ehr_key_is_refused(proxy_world: ProxyWorld) -> None:
    with httpx.Client(timeout=30, trust_env=False) as client:
        answer = client.get(
            proxy_world.proxy_root + "ehr-elsewhere-fhir/Patient",
            headers={"Authorization": f"token {proxy_world.token}"},
        )
    assert answer.status_code == 404
    assert answer.json()["resourceType"] == "OperationOutcome"
