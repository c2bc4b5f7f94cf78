"""A small misbehaving EHR: discovery, token and JWKS endpoints that a test steers.

This is a fake peer, allowed because it produces faults no real part of the
project produces: forged id_tokens (bad signature, ``alg: none``, HS256 signed
with the public key, wrong audience, expired, wrong nonce), a token endpoint
answering 500, HTML, JSON without ``access_token`` or nothing in time, and a
discovery document missing required fields; and the good answers a real
sandbox does not give on demand (every launch-context field, another user,
no identity at all). Everything it receives is kept (``received``), and the
codes, client assertions and tokens it sees or issues go to the session's
secret scan.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.jwk import RSAKey
from leak_scan import saw


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: Every SMART launch-context field a token response can carry (SMART App Launch 2.x).
FULL_CONTEXT: dict[str, Any] = {
    "patient": "p1",
    "encounter": "e1",
    "need_patient_banner": False,
    "smart_style_url": "https://ehr.example/style.json",
    "intent": "reconcile-medications",
    "tenant": "hospital-2",
    "fhirContext": [{"reference": "DiagnosticReport/r1"}, {"reference": "Location/l1"}],
}


#: Fields of a token request that carry a secret, and what each is.
SECRET_FIELDS = {
    "code": "authorization code",
    "client_assertion": "client assertion",
    "code_verifier": "code verifier",
    "refresh_token": "refresh token",
}


@dataclass
class EvilEHR:
    """State of the evil EHR; set ``mode`` (and ``nonce``/``client_id``) before a callback."""

    origin: str
    key: RSAKey
    other_key: RSAKey
    client_id: str = "hub-evil"
    client_secret: str = field(default_factory=lambda: "evil-secret-" + secrets.token_urlsafe(16))
    mode: str = "good"
    nonce: str | None = None
    token_delay: float = 0.0
    fhir_user: str = "Practitioner/evil-1"
    #: Lifetime of the access tokens it issues (short ones make a refresh come due).
    expires_in: int = 3600
    received: list[dict[str, str]] = field(default_factory=list)
    #: When set: a refresh request waits for this event (and ``held`` says one is waiting),
    #: so a test can act between the EHR's rotation of a refresh token and the hub's answer.
    hold: threading.Event | None = None
    held: threading.Event = field(default_factory=threading.Event)
    issued: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def iss(self) -> str:
        return self.origin + "/fhir"

    @property
    def basic_iss(self) -> str:
        return self.origin + "/basic"

    @property
    def broken_iss(self) -> str:
        return self.origin + "/broken"

    def discovery(self, broken: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "issuer": self.origin,
            "authorization_endpoint": self.origin + "/authorize",
            "token_endpoint": self.origin + "/token",
            "jwks_uri": self.origin + "/jwks",
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "launch-standalone", "sso-openid-connect"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }
        if broken:
            del doc["token_endpoint"]
        return doc

    def id_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.origin,
            "sub": "evil-user",
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "fhirUser": self.fhir_user,
        }
        header = {"alg": "RS256", "kid": self.key.kid}
        if self.mode == "wrong_aud":
            claims["aud"] = "someone-else"
        elif self.mode == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif self.mode == "wrong_nonce":
            claims["nonce"] = "not-the-nonce"
        elif self.mode == "wrong_iss":  # the FHIR base URL, not the authorization server
            claims["iss"] = self.iss
        elif self.mode == "header_keys":  # signed by a key the token itself points to
            # (an embedded RSA "jwk" would exceed joserfc's header size limit, refused
            # earlier; tests/smart covers it with an EC key)
            header.update(jku=self.origin + "/attacker-jwks", x5u=self.origin + "/attacker-x5u")
            return jwt.encode(header, claims, self.other_key)
        elif self.mode == "bad_signature":
            return jwt.encode({**header, "kid": self.key.kid}, claims, self.other_key)
        elif self.mode == "alg_none":
            head = _b64(json.dumps({"alg": "none"}).encode())
            return f"{head}.{_b64(json.dumps(claims).encode())}."
        elif self.mode == "hs256_public_key":
            head = _b64(json.dumps({"alg": "HS256", "kid": self.key.kid}).encode())
            body = _b64(json.dumps(claims).encode())
            public_pem = self.key.as_pem(private=False)
            sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
            return f"{head}.{body}.{_b64(sig)}"
        return jwt.encode(header, claims, self.key)

    def token_response(self) -> tuple[int, str, bytes]:
        """(status, content type, body) of the token endpoint in the current mode."""
        if self.mode == "token_500":
            return 500, "application/json", b'{"error":"server_error"}'
        if self.mode == "token_html":
            return 200, "text/html", b"<html><body>Maintenance</body></html>"
        access = "evil-access-" + secrets.token_urlsafe(16)
        refresh = "evil-refresh-" + secrets.token_urlsafe(16)
        self.issued += [access, refresh]
        saw(access, kind="access token")
        saw(refresh, kind="refresh token")
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh,
            "scope": "openid fhirUser launch/patient patient/*.rs",
            "patient": "p1",
            "id_token": self.id_token(),
        }
        if self.mode == "no_access_token":
            del body["access_token"]
        elif self.mode == "low_scope":
            body["scope"] = "openid fhirUser launch/patient"
        elif self.mode == "no_patient":
            del body["patient"]
        elif self.mode == "full_context":
            body.update(FULL_CONTEXT)
        elif self.mode == "bad_context":
            body["fhirContext"] = "DiagnosticReport/r1"
        elif self.mode == "no_identity":  # no id_token, and the hub asked for none
            del body["id_token"]
            body["scope"] = "launch/patient patient/*.rs"
        return 200, "application/json", json.dumps(body).encode()


@contextmanager
def run_evil_ehr(port: int) -> Iterator[EvilEHR]:
    """Serve an :class:`EvilEHR` on ``127.0.0.1:port`` in a thread."""
    key = RSAKey.generate_key(2048, parameters={"kid": "evil-1"}, private=True)
    other = RSAKey.generate_key(2048, parameters={"kid": "evil-1"}, private=True)
    ehr = EvilEHR(origin=f"http://127.0.0.1:{port}", key=key, other_key=other)
    saw(ehr.client_secret, kind="client secret")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            ehr.requests.append(self.path)
            if self.path.endswith("/.well-known/smart-configuration"):
                broken = self.path.startswith("/broken")
                body = json.dumps(ehr.discovery(broken)).encode()
                self._send(200, "application/json", body)
            elif self.path in ("/jwks", "/attacker-jwks"):
                key = ehr.key if self.path == "/jwks" else ehr.other_key
                jwks = {"keys": [key.as_dict(private=False)]}
                self._send(200, "application/json", json.dumps(jwks).encode())
            else:
                self._send(404, "text/plain", b"not found")

        def do_POST(self) -> None:
            ehr.requests.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            form["authorization"] = self.headers.get("Authorization") or ""
            ehr.received.append(form)
            for key, kind in SECRET_FIELDS.items():
                saw(form.get(key), kind=kind)
            saw(form["authorization"].partition(" ")[2], kind="client credentials")
            if ehr.mode == "token_timeout":
                time.sleep(ehr.token_delay or 4.0)
            hold = ehr.hold
            if hold is not None and form.get("grant_type") == "refresh_token":
                ehr.held.set()
                hold.wait(timeout=60)
            with suppress(BrokenPipeError, ConnectionResetError):
                self._send(*ehr.token_response())

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ehr
    finally:
        server.shutdown()
        server.server_close()
