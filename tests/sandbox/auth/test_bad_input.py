"""Malformed, oversized and misplaced input: always a clear 4xx, never a 500."""

from __future__ import annotations

import socket

import httpx
import pytest
from sandbox_process import SandboxProcess

from .flow import authorize

API = ["/auth/token", "/auth/introspect", "/auth/revoke"]


@pytest.mark.parametrize("path", API)
def test_json_body_is_refused(http: httpx.Client, path: str) -> None:
    response = http.post(path, json={"grant_type": "client_credentials", "token": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert "x-www-form-urlencoded" in body["error_description"]


@pytest.mark.parametrize("path", API)
def test_malformed_json_body_is_refused(http: httpx.Client, path: str) -> None:
    response = http.post(
        path, content=b'{"grant_type": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("path", API)
def test_oversized_form_is_refused(http: httpx.Client, path: str) -> None:
    response = http.post(
        path, data={"grant_type": "authorization_code", "code": "x" * (100 * 1024)}
    )
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "invalid_request"
    assert "larger than" in body["error_description"]


@pytest.mark.parametrize("path", API)
def test_parameters_in_url_are_refused(http: httpx.Client, path: str) -> None:
    response = http.post(f"{path}?code=abc", data={"grant_type": "authorization_code"})
    assert response.status_code == 400
    assert "body" in response.json()["error_description"]


def test_duplicate_token_parameters_are_refused(http: httpx.Client) -> None:
    response = http.post(
        "/auth/token",
        content=b"grant_type=authorization_code&code=a&code=b&client_id=app-public",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert "code" in response.json()["error_description"]


def test_binary_garbage_form_is_refused(http: httpx.Client) -> None:
    response = http.post(
        "/auth/token",
        content=bytes(range(256)) * 4,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_missing_grant_type_and_token(http: httpx.Client) -> None:
    assert (
        http.post("/auth/token", data={"client_id": "app-public"}).json()["error"]
        == "unsupported_grant_type"
    )
    missing = http.post("/auth/introspect", data={"client_id": "app-public"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    refresh = http.post(
        "/auth/token", data={"grant_type": "refresh_token", "client_id": "app-public"}
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_request"


def test_wrong_method_on_token_endpoint(http: httpx.Client) -> None:
    response = http.get("/auth/token")
    assert response.status_code == 405


def test_malformed_basic_header_is_refused(http: httpx.Client) -> None:
    for header in ("Basic !!!notbase64", "Basic " + "QQ==", "Bearer abc"):
        response = http.post(
            "/auth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.rs"},
            headers={"Authorization": header},
        )
        assert 400 <= response.status_code < 500, header
        assert response.json()["error"] == "invalid_client"


def test_overlong_scope_is_refused(http: httpx.Client, sbx: SandboxProcess) -> None:
    auth = authorize(http, sbx.iss, "app-public", "patient/Patient.rs " * 400)
    assert auth.result["error"] == "invalid_scope"


def test_overlong_url_is_refused(sbx: SandboxProcess) -> None:
    # httpx refuses such URLs itself, so speak HTTP/1.1 over a plain socket.
    request = (
        f"GET /auth/authorize?client_id=app-public&state={'s' * (80 * 1024)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{sbx.port}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", sbx.port), timeout=30) as sock:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline().decode()
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


def test_oversized_consent_form_is_refused(http: httpx.Client) -> None:
    response = http.post("/auth/consent", data={"req": "x", "scope": "y" * (100 * 1024)})
    assert response.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/auth/login",
        "/auth/login?req=unknown",
        "/auth/consent?req=unknown",
        "/auth/select-patient?req=",
        "/ehr?offset=abc",
        "/ehr?offset=-5",
        "/ehr?offset=99999999999999999999",
        "/ehr/launch?patient=",
        "/ehr/launch?app=http://127.0.0.1:9/callback&patient=" + "p" * 200,
    ],
)
def test_bad_page_requests_are_4xx_pages(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]


def test_revoke_without_grant_or_csrf(http: httpx.Client) -> None:
    assert http.post("/ehr/revoke", data={}).status_code == 400


def test_unknown_paths_are_404(http: httpx.Client) -> None:
    assert http.get("/auth/nothing").status_code == 404
    assert http.get("/ehr/nothing").status_code == 404


def test_bearer_token_garbage_is_401(http: httpx.Client) -> None:
    patient = http.get("/ehr").text.split('name="patient" value="')[1].split('"')[0]
    for header in (b"Bearer", b"Bearer " + b"x" * 5000, b"Basic abc", b"Bearer \xe9\xff"):
        response = http.get(f"/fhir/Patient/{patient}", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_oversized_chunked_form_is_refused(http: httpx.Client) -> None:
    def body():  # no Content-Length: sent with Transfer-Encoding: chunked
        yield b"grant_type=authorization_code&code="
        for _ in range(100):
            yield b"x" * 1024

    response = http.post(
        "/auth/token", content=body(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "override",
    [
        {"redirect_uri": 'http://127.0.0.1:9/"quoted'},
        {"redirect_uri": "http://127.0.0.1:9/\u00e9"},
        {"redirect_uri": "http://127.0.0.1:9/back\\slash"},
        {"response_type": 'to"ken'},
        {"client_id": '"quoted'},
    ],
)
def test_unquotable_authorize_parameters_are_4xx(
    http: httpx.Client, sbx: SandboxProcess, override: dict[str, str]
) -> None:
    auth = authorize(http, sbx.iss, "app-public", "patient/*.rs", extra=override)
    assert auth.response.status_code == 400
    assert "location" not in auth.response.headers
    assert "text/html" in auth.response.headers["content-type"]


@pytest.mark.parametrize("path", API)
def test_unquotable_token_parameters_are_4xx(http: httpx.Client, path: str) -> None:
    for value in ('a"b', "\u00e9\u00e9", "back\\slash"):
        data = {
            "grant_type": value,
            "token": value,
            "token_type_hint": value,
            "client_id": value,
            "code": value,
        }
        response = http.post(path, data=data)
        assert 400 <= response.status_code < 500, (value, response.status_code)
        assert "error" in response.json()


@pytest.mark.parametrize(
    "app", ["http://[::1/launch", "http://[not-ipv6]/launch", "http://127.0.0.1:9/%ZZ#frag"]
)
def test_unparsable_app_launch_url_is_a_400_page(http: httpx.Client, app: str) -> None:
    patient = http.get("/ehr").text.split('name="patient" value="')[1].split('"')[0]
    response = http.get("/ehr/launch", params={"app": app, "patient": patient})
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]
    assert "absolute http(s) URL" in response.text or "redirect URI" in response.text


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset=latin-1",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/x-www-form-urlencoded; charset=no-such-charset",
        'application/x-www-form-urlencoded; charset="',
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "text/plain",
    ],
)
@pytest.mark.parametrize("path", API)
def test_odd_content_types_are_4xx_json(http: httpx.Client, path: str, content_type: str) -> None:
    """Charsets and multipart never reach Authlib as something it cannot handle."""
    body = "grant_type=client_credentials&token=x&client_id=nobody\u00e9".encode("latin-1")
    response = http.post(path, content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]


def test_header_larger_than_the_cap_is_431(sbx: SandboxProcess) -> None:
    """64 KiB of headers at most; more is refused by the HTTP server before any code runs."""
    request = (
        f"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1:{sbx.port}\r\n"
        f"X-Padding: {'p' * (70 * 1024)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", sbx.port), timeout=30) as sock:
        sock.sendall(request)
        status_line = sock.makefile("rb").readline().decode()
    assert status_line.split()[1] == "431", status_line
