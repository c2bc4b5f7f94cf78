"""The proxy process's settings: what the hub passed (JSON) and what JupyterHub set.

JupyterHub starts a managed service with ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_API_TOKEN`` (the service's own token), ``JUPYTERHUB_SERVICE_URL``
(where to listen) and ``JUPYTERHUB_SERVICE_PREFIX`` (``/services/<name>/``);
the authenticator adds ``SMART_FHIR_PROXY_CONFIG``, a JSON object of the
remaining settings, none of them secret. A service run outside the hub gets
the same variables from its admin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from ..smart.issuer_key import issuer_keys
from ..smart.tls import ca_bundle_context

__all__ = ["CONFIG_ENV", "ProxyConfig"]

CONFIG_ENV = "SMART_FHIR_PROXY_CONFIG"


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one proxy process is configured with."""

    #: issuer key -> the EHR's FHIR base URL (the issuer), for the configured EHRs.
    issuers: dict[str, str]
    #: The hub's REST API (``.../hub/api``) and the service's own token for it.
    hub_api_url: str
    service_token: str = field(repr=False)
    #: ``http://host:port`` to listen on, and the path prefix (``/services/smart-fhir/``).
    listen_url: str = "http://127.0.0.1:8765"
    prefix: str = "/services/smart-fhir/"
    #: Per-user limits: requests in flight, requests per second, burst.
    max_concurrent: int = 8
    rate: float = 50.0
    burst: int = 100
    #: Seconds to wait for the EHR (connect, first byte, between chunks).
    timeout: float = 60.0
    #: Seconds to wait for the hub's token API.
    hub_timeout: float = 10.0
    #: Seconds after which the token API is asked again (withdrawn users, changed grants).
    revalidate_interval: float = 60.0
    #: Seconds a caller's JupyterHub token counts as checked (a revoked one stops within it).
    token_check_interval: float = 2.0
    #: Largest request body accepted (bytes); bodies are read whole so a 401 can be retried.
    max_request_body: int = 10 * 1024 * 1024
    allow_insecure_http: bool = False
    #: PEM file of the CA certificates the EHRs' TLS certificates chain to (the hub's
    #: ``ehr_ca_bundle``); empty: certifi's public CAs. Verification is always on.
    ehr_ca_bundle: str = ""
    #: Started by JupyterHub: exit once orphaned by a crashed hub and a new hub is up.
    managed: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxyConfig:
        """Read the settings; ValueError naming what is missing or wrong."""
        env = os.environ if env is None else env
        try:
            raw: dict[str, Any] = json.loads(env.get(CONFIG_ENV) or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{CONFIG_ENV} is not JSON ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{CONFIG_ENV} must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{CONFIG_ENV}: unknown setting(s) {', '.join(unknown)}")
        missing = [
            name
            for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL")
            if not env.get(name)
        ]
        if missing:
            raise ValueError(
                "the FHIR proxy runs as a JupyterHub service and needs "
                + ", ".join(missing)
                + " (JupyterHub sets them for a managed service)"
            )
        issuers = raw.pop("issuers", {})
        if isinstance(issuers, list):
            issuers = issuer_keys(issuers)
        if not isinstance(issuers, dict) or not issuers:
            raise ValueError(f"{CONFIG_ENV}: 'issuers' must name at least one EHR")
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/smart-fhir/"
        config = cls(
            issuers={str(k): str(v).rstrip("/") for k, v in issuers.items()},
            hub_api_url=env["JUPYTERHUB_API_URL"].rstrip("/"),
            service_token=env["JUPYTERHUB_API_TOKEN"],
            listen_url=env["JUPYTERHUB_SERVICE_URL"],
            prefix=prefix if prefix.endswith("/") else prefix + "/",
            **raw,
        )
        config.check()
        return config

    def check(self) -> None:
        """ValueError when a setting is out of range."""
        parts = urlsplit(self.listen_url)
        if parts.scheme != "http" or not parts.port:
            raise ValueError(f"the proxy listens on http://host:port, not {self.listen_url!r}")
        for name in ("max_concurrent", "burst", "max_request_body"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "rate",
            "timeout",
            "hub_timeout",
            "revalidate_interval",
            "token_check_interval",
        ):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.ehr_ca_bundle:
            try:
                ca_bundle_context(self.ehr_ca_bundle)
            except ValueError as exc:
                raise ValueError(f"ehr_ca_bundle: {exc}") from None

    @property
    def host(self) -> str:
        return urlsplit(self.listen_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(urlsplit(self.listen_url).port or 8765)
