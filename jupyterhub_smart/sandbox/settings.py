"""Settings of one sandbox EHR process.

One immutable object carries what the command line said, so that the
authorization server, the FHIR server and the EHR simulator agree on the URLs
they publish (the FHIR base URL is the ``iss`` and the ``aud``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SandboxSettings:
    """Everything a sandbox process is configured with."""

    host: str = "127.0.0.1"
    port: int = 8700
    data_dir: Path = Path(".sandbox-data")
    patients: int = 20
    seed: int = 42
    clients_file: Path | None = None
    auto_approve: bool = False
    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 30 * 24 * 3600
    #: Where the EHR simulator's Launch buttons send people by default.
    default_app_launch_url: str = "http://127.0.0.1:8000/hub/oauth_login"
    #: Public origin if the sandbox sits behind a proxy; else ``http://host:port``.
    public_url: str | None = None

    @property
    def origin(self) -> str:
        """``scheme://host:port`` under which every sandbox URL is published."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def fhir_base_url(self) -> str:
        """The FHIR base URL: the ``iss`` of an EHR launch and the required ``aud``."""
        return f"{self.origin}/fhir"

    @property
    def auth_base_url(self) -> str:
        """Base of the authorization server's endpoints."""
        return f"{self.origin}/auth"

    @property
    def issuer(self) -> str:
        """OpenID issuer of id_tokens (the authorization server, not the FHIR base)."""
        return self.auth_base_url
