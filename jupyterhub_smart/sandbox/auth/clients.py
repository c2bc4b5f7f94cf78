"""The registry of OAuth clients the sandbox knows (``--clients FILE``).

The file is validated as a whole when the sandbox starts, so that a typo in a
registration is a one-line error naming the entry, not a puzzling
``invalid_client`` in the middle of a login. Secrets are never echoed in those
errors.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .. import scopes as scope_rules

PUBLIC = "public"
SYMMETRIC = "confidential-symmetric"
ASYMMETRIC = "confidential-asymmetric"
CLIENT_TYPES = (PUBLIC, SYMMETRIC, ASYMMETRIC)

#: The single token endpoint authentication method each client type may use.
AUTH_METHOD_BY_TYPE = {
    PUBLIC: "none",
    SYMMETRIC: "client_secret_basic",
    ASYMMETRIC: "private_key_jwt",
}
#: A shared secret shorter than this is refused: it would be guessable.
MIN_SECRET_LENGTH = 16
#: Registered without ``--clients``: the demo hub on its default port.
DEMO_CLIENT: dict[str, Any] = {
    "client_id": "demo-public",
    "type": PUBLIC,
    "redirect_uris": ["http://127.0.0.1:8000/hub/oauth_callback"],
}
_KNOWN_FIELDS = {"client_id", "redirect_uris", "type", "client_secret", "jwks", "jwks_uri", "scope"}


class ClientRegistryError(ValueError):
    """The clients file is unreadable or one of its entries is invalid."""


@dataclass(frozen=True)
class SandboxClient(ClientMixin):
    """One registered client, in the shape Authlib's grants expect."""

    client_id: str
    client_type: str
    redirect_uris: tuple[str, ...] = ()
    client_secret: str | None = field(default=None, repr=False)
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)
    jwks_uri: str | None = None
    #: Registered scope limit; ``None`` means any well-formed scope may be granted.
    scope: tuple[str, ...] | None = None

    # -- Authlib ClientMixin -------------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        """SMART requires ``redirect_uri`` on every request: there is no default."""
        return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exact string match against a registered URI (no prefix or pattern matching)."""
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_type != SYMMETRIC or self.client_secret is None:
            return False
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Each client type authenticates one way only, at every endpoint."""
        return AUTH_METHOD_BY_TYPE[self.client_type] == method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and bool(self.redirect_uris)

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type in ("authorization_code", "refresh_token"):
            return bool(self.redirect_uris)
        if grant_type == "client_credentials":
            return self.client_type != PUBLIC and self.backend_services
        return False

    @property
    def backend_services(self) -> bool:
        """Registered for Backend Services: confidential, with ``system/`` scopes.

        A client registered without a scope limit, or with user-facing scopes
        only, is an app acting for a person: ``client_credentials`` would let
        it read every patient with no one signed in.
        """
        return any(s.startswith("system/") for s in self.scope or ())

    def get_allowed_scope(self, scope: str | None) -> str:
        """Scopes of a user-facing request this client may be granted.

        Raises ``invalid_scope`` for a missing or malformed ``scope``. Unknown
        plain scopes and ``system/`` scopes are dropped (system scopes belong to
        Backend Services, see :meth:`allowed_system_scope`).
        """
        requested = _requested(scope)
        wanted = [
            s
            for s in requested
            if s in scope_rules.IDENTITY_AND_LAUNCH_SCOPES or (s.startswith(("patient/", "user/")))
        ]
        granted = self._grantable(wanted)
        if not granted:
            raise InvalidScopeError(
                description="None of the requested scopes can be granted to this client "
                "(check the scopes it is registered for)."
            )
        return " ".join(granted)

    def allowed_system_scope(self, scope: str | None) -> str:
        """Backend Services scopes (``system/...``) this client may be granted."""
        requested = _requested(scope)
        wanted = [s for s in requested if s.startswith("system/")]
        return " ".join(self._grantable(wanted))

    def _grantable(self, wanted: Sequence[str]) -> list[str]:
        try:
            return scope_rules.grantable_scopes(wanted, self.scope)
        except scope_rules.ScopeError as exc:
            raise InvalidScopeError(description=_ascii(str(exc))) from None

    @property
    def redirect_origins(self) -> set[str]:
        """``scheme://host:port`` of every registered redirect URI."""
        return {_origin(uri) for uri in self.redirect_uris}


def _requested(scope: str | None) -> list[str]:
    if not scope or not scope.strip():
        raise InvalidScopeError(description="The 'scope' parameter is required.")
    try:
        return scope_rules.split_scope(scope)
    except scope_rules.ScopeError as exc:
        raise InvalidScopeError(description=_ascii(str(exc))) from None


def _ascii(text: str) -> str:
    """Authlib refuses error descriptions with quotes, backslashes or non-ASCII."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)


def _split_url(url: str) -> SplitResult | None:
    """``urlsplit`` that answers ``None`` where it would raise (``http://[::1``)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class ClientRegistry:
    """Clients by ``client_id``; read-only once built."""

    def __init__(self, clients: Iterable[SandboxClient]) -> None:
        self._clients = {c.client_id: c for c in clients}

    def get(self, client_id: object) -> SandboxClient | None:
        if not isinstance(client_id, str):
            return None
        return self._clients.get(client_id)

    def __iter__(self) -> Iterator[SandboxClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    def for_app_url(self, app_url: str) -> list[SandboxClient]:
        """Clients whose redirect URIs share the origin of an app launch URL."""
        origin = _origin(app_url)
        return [c for c in self._clients.values() if origin in c.redirect_origins]

    @classmethod
    def from_file(cls, path: Path | None) -> ClientRegistry:
        """Load and validate ``--clients``; without a file, the demo client only."""
        if path is None:
            return cls([parse_client(DEMO_CLIENT, "built-in demo client")])
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ClientRegistryError(f"cannot read clients file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ClientRegistryError(f"clients file {path} is not valid JSON: {exc}") from None
        return cls.from_entries(raw, source=str(path))

    @classmethod
    def from_entries(cls, raw: object, source: str = "clients") -> ClientRegistry:
        if not isinstance(raw, list) or not raw:
            raise ClientRegistryError(f"{source}: expected a non-empty JSON list of clients")
        clients: list[SandboxClient] = []
        seen: set[str] = set()
        for index, entry in enumerate(raw):
            label = f"{source}: entry {index}"
            if isinstance(entry, dict) and isinstance(entry.get("client_id"), str):
                label += f" (client_id {entry['client_id']!r})"
            client = parse_client(entry, label)
            if client.client_id in seen:
                raise ClientRegistryError(f"{label}: duplicate client_id")
            seen.add(client.client_id)
            clients.append(client)
        return cls(clients)


def parse_client(entry: object, label: str) -> SandboxClient:
    """Validate one registry entry; errors name the entry and the field, never a secret."""

    def fail(problem: str) -> ClientRegistryError:
        return ClientRegistryError(f"{label}: {problem}")

    if not isinstance(entry, dict):
        raise fail("expected a JSON object")
    unknown = set(entry) - _KNOWN_FIELDS
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_KNOWN_FIELDS)}")
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip() or len(client_id) > 200:
        raise fail("'client_id' must be a non-empty string of at most 200 characters")
    client_type = entry.get("type")
    if client_type not in CLIENT_TYPES:
        raise fail(f"'type' must be one of {list(CLIENT_TYPES)}")
    redirect_uris = entry.get("redirect_uris", [])
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        raise fail("'redirect_uris' must be a list of URLs")
    for uri in redirect_uris:
        parts = _split_url(uri)
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.fragment
        ):
            raise fail(f"redirect URI {uri!r} must be an absolute http(s) URL without fragment")
    if not redirect_uris and client_type != ASYMMETRIC:
        raise fail("'redirect_uris' must list at least one URL for this client type")

    secret = entry.get("client_secret")
    jwks = entry.get("jwks")
    jwks_uri = entry.get("jwks_uri")
    if client_type == SYMMETRIC:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            raise fail(
                f"'client_secret' must be a string of at least {MIN_SECRET_LENGTH} characters"
            )
    elif secret is not None:
        raise fail("'client_secret' is only for confidential-symmetric clients")
    if client_type == ASYMMETRIC:
        if (jwks is None) == (jwks_uri is None):
            raise fail("give exactly one of 'jwks' or 'jwks_uri'")
        if jwks is not None:
            _check_public_jwks(jwks, fail)
        if jwks_uri is not None:
            jwks_parts = _split_url(jwks_uri) if isinstance(jwks_uri, str) else None
            if (
                jwks_parts is None
                or jwks_parts.scheme not in ("http", "https")
                or not jwks_parts.netloc
            ):
                raise fail("'jwks_uri' must be an absolute http(s) URL")
    elif jwks is not None or jwks_uri is not None:
        raise fail("'jwks' and 'jwks_uri' are only for confidential-asymmetric clients")

    scope_value = entry.get("scope")
    registered: tuple[str, ...] | None = None
    if scope_value is not None:
        if not isinstance(scope_value, str) or not scope_value.strip():
            raise fail("'scope' must be a non-empty space-separated string")
        try:
            registered = tuple(scope_rules.split_scope(scope_value))
            for item in registered:
                scope_rules.parse_resource_scope(item)
        except scope_rules.ScopeError as exc:
            raise fail(f"'scope': {exc}") from None
    if not redirect_uris and not any(s.startswith("system/") for s in registered or ()):
        raise fail(
            "a client without 'redirect_uris' is a Backend Services client: register the "
            "'system/' scopes it may use in 'scope' (e.g. \"system/*.rs\")"
        )
    return SandboxClient(
        client_id=client_id,
        client_type=client_type,
        redirect_uris=tuple(redirect_uris),
        client_secret=secret,
        jwks=jwks,
        jwks_uri=jwks_uri,
        scope=registered,
    )


def _check_public_jwks(jwks: object, fail: Any) -> None:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise fail("'jwks' must be a JWK Set object with a non-empty 'keys' list")
    for key in jwks["keys"]:
        if not isinstance(key, dict):
            raise fail("'jwks' keys must be JSON objects")
        if "d" in key or "k" in key:
            raise fail(
                "'jwks' must hold public keys only (found private or symmetric key material)"
            )
        if key.get("kty") not in ("RSA", "EC"):
            raise fail("'jwks' keys must be RSA or EC keys")
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise fail("'jwks' holds a key that cannot be imported") from None
