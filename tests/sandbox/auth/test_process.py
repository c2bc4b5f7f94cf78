"""The sandbox process: start-up errors, restart persistence, request log."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sandbox_process import SandboxProcess, free_port, run_sandbox

from .flow import REDIRECT_URI, authorize, exchange

CLIENTS = [{"client_id": "app-public", "type": "public", "redirect_uris": [REDIRECT_URI]}]


def run_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_command(
            "--port", str(port), "--data-dir", str(tmp_path / "data"), "--patients", "2"
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "SMART sandbox ready" not in result.stdout


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ("not json", "not valid JSON"),
        ([], "non-empty JSON list"),
        (
            [{"client_id": "a", "type": "weird", "redirect_uris": [REDIRECT_URI]}],
            "entry 0 (client_id 'a'): 'type'",
        ),
        (
            [
                {"client_id": "ok", "type": "public", "redirect_uris": [REDIRECT_URI]},
                {
                    "client_id": "s",
                    "type": "confidential-symmetric",
                    "client_secret": "short-secret-x",
                    "redirect_uris": [REDIRECT_URI],
                },
            ],
            "entry 1 (client_id 's'): 'client_secret'",
        ),
        ([{"client_id": "p", "type": "public", "redirect_uris": ["not a url"]}], "redirect URI"),
        (
            [
                {
                    "client_id": "k",
                    "type": "confidential-asymmetric",
                    "redirect_uris": [REDIRECT_URI],
                }
            ],
            "'jwks' or 'jwks_uri'",
        ),
    ],
)
def test_bad_clients_file_names_the_entry(tmp_path: Path, entries: object, expected: str) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text(
        entries if isinstance(entries, str) else json.dumps(entries), encoding="utf-8"
    )
    result = run_command(
        "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--clients", str(clients)
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "short-secret-x" not in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_clients_file(tmp_path: Path) -> None:
    result = run_command(
        "--data-dir", str(tmp_path / "d"), "--clients", str(tmp_path / "nope.json")
    )
    assert result.returncode == 2
    assert "cannot read clients file" in result.stderr


def test_bad_arguments_are_usage_errors() -> None:
    for args in (
        ["--port", "0"],
        ["--port", "abc"],
        ["--access-token-lifetime", "-5"],
        ["--patients", "0"],
    ):
        result = run_command(*args)
        assert result.returncode == 2, args
        assert "usage:" in result.stderr


def test_tokens_and_signing_key_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    one = run_sandbox(tmp_path / "one", CLIENTS, data_dir=data_dir, port=port)
    with one as first, httpx.Client(base_url=first.origin, follow_redirects=False) as http:
        auth = authorize(
            http, first.iss, "app-public", "launch/patient patient/*.rs offline_access"
        )
        body = exchange(http, auth, "app-public").json()
        jwks = http.get("/auth/jwks").json()
    # SIGTERM stops it cleanly: exit status 0, storage closed, the port free again
    assert first.process.returncode == 0
    first.wait_for_log("sandbox stopped")
    two = run_sandbox(tmp_path / "two", CLIENTS, data_dir=data_dir, port=port)
    with two as second, httpx.Client(base_url=second.origin, follow_redirects=False) as http:
        assert http.get("/auth/jwks").json() == jwks
        read = http.get(
            f"/fhir/Patient/{body['patient']}",
            headers={"Authorization": f"Bearer {body['access_token']}"},
        )
        assert read.status_code == 200
        refreshed = http.post(
            "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": "app-public",
            },
        )
        assert refreshed.status_code == 200
    stored = (data_dir / "auth" / "auth.sqlite").read_bytes()
    assert body["access_token"].encode() not in stored
    assert body["refresh_token"].encode() not in stored
    key_file = data_dir / "auth" / "id_token_signing_key.json"
    assert key_file.stat().st_mode & 0o077 == 0
    assert (data_dir / "auth").stat().st_mode & 0o077 == 0


def test_request_log_has_one_line_per_request_with_client_id(
    sbx: SandboxProcess, http: httpx.Client
) -> None:
    auth = authorize(http, sbx.iss, "app-public", "launch/patient patient/*.rs")
    exchange(http, auth, "app-public")
    log = sbx.wait_for_log("POST /auth/token 200 client_id=app-public")
    assert "GET /auth/authorize 302 client_id=-" in log or "GET /auth/authorize 302" in log
    assert "POST /auth/token 200 client_id=app-public" in log
    assert "?" not in "".join(
        line for line in log.splitlines() if " /auth/" in line and "access:" in line
    )


def test_help_states_the_access_rules() -> None:
    """The sandbox's own documentation says why another patient's resource is a 404."""
    result = run_command("--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "answers 401 with WWW-Authenticate: Bearer" in text
    assert "403 with an OperationOutcome naming the scope it needs" in text
    assert "answers 404, exactly like an id that does not exist" in text
    assert "--code-lifetime" in text


def test_clients_file_with_an_unparsable_url_names_the_entry(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text(
        json.dumps([{"client_id": "v6", "type": "public", "redirect_uris": ["http://[::1/cb"]}]),
        encoding="utf-8",
    )
    result = run_command(
        "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--clients", str(clients)
    )
    assert result.returncode == 2
    assert "entry 0 (client_id 'v6'): redirect URI 'http://[::1/cb'" in result.stderr
    assert "Traceback" not in result.stderr
