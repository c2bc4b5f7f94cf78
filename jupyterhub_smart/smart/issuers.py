"""The issuer allow-list: which EHRs this hub talks to, and as whom.

An EHR launch is an unauthenticated GET whose ``iss`` parameter picks the
server the hub is about to send a client secret, a client assertion and an
authorization code to. A forged ``iss`` therefore must never be contacted:
:class:`IssuerPolicy` answers from configuration alone (no network), after
normalising the URL so that trivial spellings (``HTTPS://EHR.example.org:443/fhir/``)
neither bypass the list nor lock real users out.

Each issuer has its own client registration (RFC 9700 4.4: one client per
authorization server), so credentials for one EHR are never sent to another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit, urlunsplit

from .errors import UnknownIssuer, safe_text
from .fhir_rules import is_loopback_host

__all__ = [
    "CLIENT_AUTH_METHODS",
    "SIGNING_ALGORITHMS",
    "ClientAuthMethod",
    "IssuerPolicy",
    "IssuerRegistration",
    "normalize_issuer",
]

ClientAuthMethod = Literal["public", "client_secret_basic", "private_key_jwt"]
CLIENT_AUTH_METHODS: tuple[str, ...] = get_args(ClientAuthMethod)
#: Algorithms SMART asks clients to support for ``private_key_jwt``.
SIGNING_ALGORITHMS: tuple[str, ...] = ("RS384", "ES384")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_ISSUER_LENGTH = 2048


def normalize_issuer(url: str) -> str:
    """Return the canonical spelling of a FHIR base URL (an ``iss``).

    Scheme and host are lower-cased, a default port is dropped, trailing
    slashes are dropped; the path keeps its case (FHIR servers treat paths
    case-sensitively). Anything that is not a plain http(s) URL is refused
    with :class:`UnknownIssuer`: user-info (``https://ehr@evil``) because it
    is the classic way to make a URL look like another host, a fragment or a
    query because a FHIR base URL has neither, control characters and
    whitespace because they smuggle. Percent-encoding and dot segments are
    *not* decoded: such spellings simply fail to match the allow-list, which
    fails closed.
    """
    if not isinstance(url, str) or not url:
        raise UnknownIssuer("No issuer (iss) was given.")
    shown = safe_text(url)
    if len(url) > _MAX_ISSUER_LENGTH:
        raise UnknownIssuer(f"The issuer URL is longer than {_MAX_ISSUER_LENGTH} characters.")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise UnknownIssuer(f"The issuer {shown!r} contains whitespace or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnknownIssuer(f"The issuer {shown!r} is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnknownIssuer(f"The issuer {shown!r} is not an http(s) URL.")
    if "@" in parts.netloc:
        raise UnknownIssuer(
            f"The issuer {shown!r} contains user information, which is not allowed."
        )
    if parts.fragment or url.endswith("#"):
        raise UnknownIssuer(f"The issuer {shown!r} contains a fragment, which is not allowed.")
    if parts.query or "?" in url:
        raise UnknownIssuer(f"The issuer {shown!r} contains a query, which is not allowed.")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnknownIssuer(f"The issuer {shown!r} has no host.")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, "", ""))


@dataclass(frozen=True)
class IssuerRegistration:
    """How this hub is registered with one EHR (one FHIR base URL)."""

    #: Normalised FHIR base URL: the ``iss`` of an EHR launch and the ``aud``.
    issuer: str
    client_id: str
    client_auth: ClientAuthMethod
    client_secret: str | None = field(default=None, repr=False)
    private_key_path: str | None = None
    key_id: str | None = None
    #: Overrides the hub's default scope for this issuer.
    scope: tuple[str, ...] | None = None
    #: ``RS384`` or ``ES384``; ``None`` means "from the key type".
    signing_alg: str | None = None


_ALLOWED_KEYS = frozenset(
    {
        "client_id",
        "client_auth",
        "client_secret",
        "private_key_path",
        "key_id",
        "scope",
        "signing_alg",
    }
)


def _registration(issuer: str, raw_key: str, entry: Mapping[str, Any]) -> IssuerRegistration:
    """Validate one configuration entry; ValueError names the issuer and the key."""
    where = f"issuers[{raw_key!r}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict with at least 'client_id'.")
    unknown = sorted(set(entry) - _ALLOWED_KEYS)
    if unknown:
        raise ValueError(
            f"{where} has unknown key(s) {unknown}; allowed keys are {sorted(_ALLOWED_KEYS)}."
        )
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        raise ValueError(f"{where}['client_id'] must be a non-empty string.")

    secret = entry.get("client_secret")
    key_path = entry.get("private_key_path")
    for name, value in (("client_secret", secret), ("private_key_path", key_path)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{where}[{name!r}] must be a non-empty string.")

    auth = entry.get("client_auth")
    if auth is None:
        auth = "private_key_jwt" if key_path else "client_secret_basic" if secret else "public"
    if auth not in CLIENT_AUTH_METHODS:
        raise ValueError(f"{where}['client_auth'] must be one of {list(CLIENT_AUTH_METHODS)}.")
    if auth == "client_secret_basic" and not secret:
        raise ValueError(f"{where}: client_auth 'client_secret_basic' needs 'client_secret'.")
    if auth == "private_key_jwt" and not key_path:
        raise ValueError(f"{where}: client_auth 'private_key_jwt' needs 'private_key_path'.")
    if secret and auth != "client_secret_basic":
        raise ValueError(
            f"{where}: 'client_secret' is set but client_auth is {auth!r}; remove one of them."
        )
    if key_path and auth != "private_key_jwt":
        raise ValueError(
            f"{where}: 'private_key_path' is set but client_auth is {auth!r}; remove one of them."
        )

    key_id = entry.get("key_id")
    if key_id is not None and (not isinstance(key_id, str) or not key_id):
        raise ValueError(f"{where}['key_id'] must be a non-empty string.")
    alg = entry.get("signing_alg")
    if alg is not None and alg not in SIGNING_ALGORITHMS:
        raise ValueError(f"{where}['signing_alg'] must be one of {list(SIGNING_ALGORITHMS)}.")
    if alg is not None and auth != "private_key_jwt":
        raise ValueError(f"{where}: 'signing_alg' only applies to client_auth 'private_key_jwt'.")

    scope = _scope_tuple(entry.get("scope"), f"{where}['scope']")
    return IssuerRegistration(
        issuer=issuer,
        client_id=client_id,
        client_auth=cast(ClientAuthMethod, auth),
        client_secret=secret,
        private_key_path=key_path,
        key_id=key_id,
        scope=scope,
        signing_alg=alg,
    )


def _scope_tuple(value: object, where: str) -> tuple[str, ...] | None:
    """A scope given as a space-separated string or a list of strings."""
    if value is None:
        return None
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"{where} must be a space-separated string or a list of strings.")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item or any(c.isspace() for c in item):
            raise ValueError(f"{where} contains {safe_text(item)!r}, which is not a single scope.")
        if item not in result:
            result.append(item)
    if not result:
        raise ValueError(f"{where} is empty; leave it out to use the default scope.")
    return tuple(result)


class IssuerPolicy:
    """The allow-list of issuers, keyed by normalised FHIR base URL.

    Built once from configuration (``SMARTAuthenticator.issuers``); every entry
    is validated up front, so a typo stops the hub at start-up with a message
    naming the bad key instead of failing a clinician's login later. Plain
    ``http`` issuers are refused unless they are on a loopback host (the
    sandbox) or ``allow_insecure_http`` is set: tokens must travel over TLS.
    """

    def __init__(
        self, issuers: Mapping[str, Mapping[str, Any]], *, allow_insecure_http: bool = False
    ) -> None:
        if not isinstance(issuers, Mapping):
            raise ValueError("issuers must be a dict of FHIR base URL -> registration.")
        self._registrations: dict[str, IssuerRegistration] = {}
        for raw_key, entry in issuers.items():
            try:
                issuer = normalize_issuer(raw_key)
            except UnknownIssuer as exc:
                raise ValueError(f"issuers key {safe_text(raw_key)!r}: {exc}") from None
            if (
                issuer.startswith("http:")
                and not allow_insecure_http
                and not is_loopback_host(issuer)
            ):
                raise ValueError(
                    f"issuers key {raw_key!r} uses plain http; SMART tokens must travel over "
                    "https (plain http is only accepted for loopback hosts)."
                )
            if issuer in self._registrations:
                raise ValueError(
                    f"issuers key {raw_key!r} is the same issuer as another key ({issuer!r})."
                )
            self._registrations[issuer] = _registration(issuer, raw_key, entry)

    def get(self, iss: str) -> IssuerRegistration:
        """The registration for ``iss``; :class:`UnknownIssuer` if it is not allowed."""
        issuer = normalize_issuer(iss)
        try:
            return self._registrations[issuer]
        except KeyError:
            raise UnknownIssuer(
                f"This hub is not registered with the EHR {safe_text(issuer)!r}; "
                "ask the hub's administrators to add it to SMARTAuthenticator.issuers."
            ) from None

    def __contains__(self, iss: object) -> bool:
        if not isinstance(iss, str):
            return False
        try:
            return normalize_issuer(iss) in self._registrations
        except UnknownIssuer:
            return False

    def __len__(self) -> int:
        return len(self._registrations)

    @property
    def issuers(self) -> list[str]:
        """The normalised issuers, in configuration order."""
        return list(self._registrations)

    def registrations(self) -> list[IssuerRegistration]:
        """Every registration, in configuration order."""
        return list(self._registrations.values())
