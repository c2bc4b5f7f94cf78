"""Sandboxes and clients for the authorization-server tests.

One auto-approving sandbox serves most tests of this package (package scope);
tests that need short lifetimes or the interactive pages start their own.
Every secret a test handles goes to the session's ``secret_scan``, which reads
the sandbox logs for all of them when the session ends.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey
from leak_scan import Ledger
from sandbox_process import SandboxProcess, run_sandbox

from .flow import OTHER_REDIRECT_URI, REDIRECT_URI

RS_KEY = RSAKey.generate_key(2048, parameters={"kid": "rs384-key"}, private=True)
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "es384-key"}, private=True)
URI_KEY = RSAKey.generate_key(2048, parameters={"kid": "jwks-uri-key"}, private=True)
URI_EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "jwks-uri-ec-key"}, private=True)
ROTATION_OLD_KEY = RSAKey.generate_key(2048, parameters={"kid": "rotation-1"}, private=True)
ROTATION_NEW_KEY = ECKey.generate_key("P-384", parameters={"kid": "rotation-2"}, private=True)
#: Nothing listens on port 9 of the loopback (the test redirect URIs use it too).
DEAD_JWKS_URI = "http://127.0.0.1:9/jwks.json"
SYMMETRIC_SECRET = "sandbox-auth-test-secret-8f3a1c"

HUB_REDIRECT_URI = "http://127.0.0.1:8000/hub/oauth_callback"
LIMITED_SCOPE = "openid fhirUser launch launch/patient offline_access patient/Patient.rs"


def public_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


class JWKSServer:
    """A real HTTP server publishing a client's JWKS (for ``jwks_uri`` clients).

    ``/jwks.json`` is the key set; ``/broken`` answers 500 and ``/not-jwks``
    an HTML page, the faults a client's key server really shows.
    """

    def __init__(self, jwks: dict[str, Any]) -> None:
        answers = {
            "/jwks.json": (200, "application/json", json.dumps(jwks).encode()),
            "/broken": (500, "text/plain", b"internal error"),
            "/not-jwks": (200, "text/html", b"<html><body>Sign in</body></html>"),
        }
        self._answers = answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = answers.get(
                    self.path, (404, "text/plain", b"not found")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.origin}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, jwks: dict[str, Any]) -> None:
        """Serve another key set from now on (a client rotating its keys)."""
        self._answers["/jwks.json"] = (200, "application/json", json.dumps(jwks).encode())

    def __enter__(self) -> JWKSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def clients(jwks_uri: str, rotating_jwks_uri: str = DEAD_JWKS_URI) -> list[dict[str, Any]]:
    return [
        {"client_id": "app-public", "type": "public", "redirect_uris": [REDIRECT_URI]},
        {"client_id": "app-other", "type": "public", "redirect_uris": [OTHER_REDIRECT_URI]},
        {
            "client_id": "app-symmetric",
            "type": "confidential-symmetric",
            "client_secret": SYMMETRIC_SECRET,
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": "app-asymmetric",
            "type": "confidential-asymmetric",
            "jwks": public_jwks(RS_KEY, EC_KEY),
            "redirect_uris": [REDIRECT_URI],
        },
        {
            "client_id": "app-limited",
            "type": "public",
            "redirect_uris": [REDIRECT_URI],
            "scope": LIMITED_SCOPE,
        },
        {
            "client_id": "backend",
            "type": "confidential-asymmetric",
            "jwks": public_jwks(RS_KEY, EC_KEY),
            "scope": "system/*.rs",
        },
        {
            "client_id": "backend-uri",
            "type": "confidential-asymmetric",
            "jwks_uri": jwks_uri,
            "scope": "system/Patient.rs system/Observation.rs",
        },
        # jwks_uri faults: nothing listening, a 500, a page that is not a JWK Set.
        *(
            {
                "client_id": client_id,
                "type": "confidential-asymmetric",
                "jwks_uri": uri,
                "scope": "system/Patient.rs",
            }
            for client_id, uri in (
                ("backend-dead-uri", DEAD_JWKS_URI),
                ("backend-500-uri", jwks_uri.replace("/jwks.json", "/broken")),
                ("backend-html-uri", jwks_uri.replace("/jwks.json", "/not-jwks")),
            )
        ),
        {
            "client_id": "backend-rotating",
            "type": "confidential-asymmetric",
            "jwks_uri": rotating_jwks_uri,
            "scope": "system/Patient.rs",
        },
        # On the origin of the EHR simulator's default app launch URL (the demo hub).
        {"client_id": "hub", "type": "public", "redirect_uris": [HUB_REDIRECT_URI]},
    ]


@pytest.fixture(scope="package")
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer(public_jwks(URI_KEY, URI_EC_KEY)) as server:
        yield server


@pytest.fixture(scope="package")
def rotating_jwks_server() -> Iterator[JWKSServer]:
    """The key server of ``backend-rotating``; a test publishes a new key on it."""
    with JWKSServer(public_jwks(ROTATION_OLD_KEY)) as server:
        yield server


@pytest.fixture(scope="package")
def sbx(
    tmp_path_factory: pytest.TempPathFactory,
    jwks_server: JWKSServer,
    rotating_jwks_server: JWKSServer,
    secret_scan: Ledger,
) -> Iterator[SandboxProcess]:
    """The auto-approving sandbox most tests share."""
    secret_scan.add(SYMMETRIC_SECRET, kind="client secret")
    workdir: Path = tmp_path_factory.mktemp("sandbox-auth")
    with run_sandbox(workdir, clients(jwks_server.url, rotating_jwks_server.url)) as process:
        yield process


@pytest.fixture
def http(sbx: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sbx.origin, follow_redirects=False, timeout=30) as client:
        yield client
