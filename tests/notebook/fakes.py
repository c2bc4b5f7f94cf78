"""Fault injection for peers that cannot be made to fail on demand (``httpx.MockTransport``).

Only peers are faked: the hub's token API (before the hub exists and for its
error answers) and a FHIR server's transport faults (429/503, resets, broken
pages). Our own code always runs for real.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from .sandbox_tokens import SEEN_SECRETS

HUB_API = "http://hub.test/hub/api/smart/token"
FHIR_BASE = "https://ehr.test/fhir"


def secret(prefix: str) -> str:
    """A fresh secret-looking value, registered for the log checks."""
    value = f"{prefix}-{secrets.token_urlsafe(12)}"
    SEEN_SECRETS.add(value)
    return value


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def outcome(diagnostics: str, code: str = "forbidden") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class FakeTokenAPI:
    """The hub token API contract: counts calls, can be slow, hands out new tokens."""

    def __init__(
        self,
        api_token: str,
        *,
        lifetime: float = 3600,
        delay: float = 0.0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.api_token = api_token
        self.lifetime = lifetime
        self.delay = delay
        self.extra = extra or {}
        self.calls = 0
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        self.answer: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if request.headers.get("Authorization") != f"token {self.api_token}":
            return json_response(401, {"status": 401, "message": "Forbidden"})
        if self.answer is not None:
            return self.answer(request)
        token = secret("access")
        with self._lock:
            self.tokens.append(token)
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_at": time.time() + self.lifetime,
            "scope": "launch/patient openid fhirUser patient/*.rs",
            "fhir_base_url": FHIR_BASE,
            "patient": "p1",
            "encounter": None,
            "fhirUser": "Practitioner/practitioner-1",
            "need_patient_banner": True,
            "smart_style_url": None,
            **self.extra,
        }
        return json_response(200, body)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)
