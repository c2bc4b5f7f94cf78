"""SMART discovery: ``{FHIR base}/.well-known/smart-configuration``, checked and cached.

The configuration decides where the hub sends the user and its credentials, so
it is validated before use: the token and authorization endpoints must be
absolute http(s) URLs (relative ones are resolved against the FHIR base, as
SMART asks), an https FHIR base may not point at plain-http endpoints, PKCE
S256 must be advertised, and a server that offers ``sso-openid-connect`` must
name its ``issuer`` and ``jwks_uri`` (the id_token checks pin both).

Only issuers that passed the allow-list reach this module; it never decides
whether to trust an issuer, only whether its published configuration is usable.

Servers that predate ``.well-known`` (SMART 1.0) publish OAuth endpoints in
their CapabilityStatement; when ``.well-known`` answers 404 the cache falls back
to ``{base}/metadata`` (``metadata_fallback=True``, the default). Such a
configuration cannot advertise PKCE, so it is marked ``source="capability-statement"``
and a warning is logged; PKCE S256 is still sent on every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx

from ._http import BodyTooLarge, Fetched, FetchTimeout, fetch, transport_failure
from .errors import DiscoveryError, safe_text
from .issuers import normalize_issuer
from .singleflight import SingleFlight

__all__ = [
    "OAUTH_URIS_EXTENSION",
    "DiscoveryCache",
    "SMARTConfiguration",
    "parse_smart_configuration",
]

log = logging.getLogger(__name__)

WELL_KNOWN_PATH = "/.well-known/smart-configuration"
OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/capabilities"
_MAX_DISCOVERY_BYTES = 1 << 20
_MAX_METADATA_BYTES = 16 << 20


@dataclass(frozen=True)
class SMARTConfiguration:
    """A validated SMART configuration of one FHIR server."""

    fhir_base_url: str
    #: OpenID issuer of id_tokens (the authorization server; need not be the FHIR base).
    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    revocation_endpoint: str | None
    introspection_endpoint: str | None
    capabilities: frozenset[str]
    code_challenge_methods_supported: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    grant_types_supported: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    #: RFC 9207: the server sends ``iss`` in authorization responses.
    authorization_response_iss_parameter_supported: bool = False
    #: Where this came from: ``well-known`` or the legacy ``capability-statement``.
    source: Literal["well-known", "capability-statement"] = "well-known"

    def supports(self, capability: str) -> bool:
        """True when the server lists ``capability`` (e.g. ``permission-v2``)."""
        return capability in self.capabilities


def _fail(base: str, what: str, *, status: int | None = None) -> DiscoveryError:
    return DiscoveryError(f"SMART discovery for {base} failed: {what}", status=status)


def _string_list(doc: Mapping[str, Any], name: str, base: str) -> tuple[str, ...]:
    value = doc.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(base, f"{name!r} must be a list of strings.")
    return tuple(value)


def _endpoint(doc: Mapping[str, Any], name: str, base: str, *, required: bool) -> str | None:
    """Resolve and check one endpoint URL of the configuration."""
    value = doc.get(name)
    if value is None or value == "":
        if required:
            raise _fail(base, f"the configuration has no {name!r}.")
        return None
    if not isinstance(value, str):
        raise _fail(base, f"{name!r} must be a string URL.")
    return resolve_endpoint(base, value, name)


def resolve_endpoint(base: str, value: str, name: str) -> str:
    """Resolve a possibly relative endpoint against the FHIR base and check it.

    Refuses non-http(s) schemes, user-info, fragments, and a downgrade from an
    https FHIR base to a plain-http endpoint (credentials would travel in clear).
    """
    url = urljoin(base + "/", value.strip())
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(base, f"{name!r} is not a valid URL ({safe_text(value)!r}).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(base, f"{name!r} is not an http(s) URL ({safe_text(value)!r}).")
    if "@" in parts.netloc or parts.fragment:
        raise _fail(base, f"{name!r} contains user information or a fragment.")
    if base.startswith("https:") and parts.scheme == "http":
        raise _fail(base, f"{name!r} is plain http while the FHIR server is https.")
    return url


def parse_smart_configuration(base: str, doc: object) -> SMARTConfiguration:
    """Validate a ``.well-known/smart-configuration`` document; DiscoveryError if unusable."""
    if not isinstance(doc, dict):
        raise _fail(base, "the configuration is not a JSON object.")
    capabilities = frozenset(_string_list(doc, "capabilities", base))
    methods = _string_list(doc, "code_challenge_methods_supported", base)
    if "S256" not in methods:
        raise _fail(
            base,
            "the server does not advertise PKCE S256 (code_challenge_methods_supported); "
            "SMART requires it and this hub refuses to sign in without it.",
        )
    issuer = doc.get("issuer")
    if issuer is not None and (not isinstance(issuer, str) or not issuer):
        raise _fail(base, "'issuer' must be a non-empty string.")
    jwks_uri = _endpoint(doc, "jwks_uri", base, required=False)
    if "sso-openid-connect" in capabilities:
        if issuer is None:
            raise _fail(base, "'sso-openid-connect' is advertised but 'issuer' is missing.")
        if jwks_uri is None:
            raise _fail(base, "'sso-openid-connect' is advertised but 'jwks_uri' is missing.")
    iss_param = doc.get("authorization_response_iss_parameter_supported", False)
    return SMARTConfiguration(
        fhir_base_url=base,
        issuer=issuer,
        authorization_endpoint=_endpoint(doc, "authorization_endpoint", base, required=True) or "",
        token_endpoint=_endpoint(doc, "token_endpoint", base, required=True) or "",
        jwks_uri=jwks_uri,
        revocation_endpoint=_endpoint(doc, "revocation_endpoint", base, required=False),
        introspection_endpoint=_endpoint(doc, "introspection_endpoint", base, required=False),
        capabilities=capabilities,
        code_challenge_methods_supported=methods,
        scopes_supported=_string_list(doc, "scopes_supported", base),
        grant_types_supported=_string_list(doc, "grant_types_supported", base),
        token_endpoint_auth_methods_supported=_string_list(
            doc, "token_endpoint_auth_methods_supported", base
        ),
        authorization_response_iss_parameter_supported=iss_param is True,
        source="well-known",
    )


def parse_capability_statement(base: str, doc: object) -> SMARTConfiguration:
    """Read the SMART 1.0 ``oauth-uris`` extension of a CapabilityStatement."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "CapabilityStatement":
        raise _fail(base, "/metadata is not a CapabilityStatement.")
    uris: dict[str, Any] = {}
    capabilities: list[str] = []
    for rest in doc.get("rest") or []:
        security = rest.get("security") if isinstance(rest, dict) else None
        if not isinstance(security, dict):
            continue
        for ext in security.get("extension") or []:
            if not isinstance(ext, dict):
                continue
            if ext.get("url") == OAUTH_URIS_EXTENSION:
                for sub in ext.get("extension") or []:
                    if isinstance(sub, dict) and isinstance(sub.get("url"), str):
                        uris[sub["url"]] = sub.get("valueUri")
            elif ext.get("url") == CAPABILITIES_EXTENSION and isinstance(ext.get("valueCode"), str):
                capabilities.append(ext["valueCode"])
    if not uris:
        raise _fail(
            base,
            "no .well-known/smart-configuration, and the CapabilityStatement has no "
            "SMART oauth-uris extension: is this a SMART-enabled FHIR server?",
        )
    mapped = {
        "authorization_endpoint": uris.get("authorize"),
        "token_endpoint": uris.get("token"),
        "revocation_endpoint": uris.get("revoke"),
        "introspection_endpoint": uris.get("introspect"),
    }
    return SMARTConfiguration(
        fhir_base_url=base,
        issuer=None,
        authorization_endpoint=_endpoint(mapped, "authorization_endpoint", base, required=True)
        or "",
        token_endpoint=_endpoint(mapped, "token_endpoint", base, required=True) or "",
        jwks_uri=None,
        revocation_endpoint=_endpoint(mapped, "revocation_endpoint", base, required=False),
        introspection_endpoint=_endpoint(mapped, "introspection_endpoint", base, required=False),
        capabilities=frozenset(capabilities),
        code_challenge_methods_supported=(),
        scopes_supported=(),
        grant_types_supported=(),
        source="capability-statement",
    )


class DiscoveryCache:
    """Fetches, validates and caches SMART configurations per FHIR base URL.

    Concurrent callers for the same URL share one fetch; a good configuration
    is kept for ``ttl`` seconds; failures are not cached (the next login
    retries). ``clock`` is injectable so that tests need not sleep.
    ``observer(fhir_base_url, error)`` hears the end of every fetch (``error``
    None on success): the hub's readiness and metrics follow discovery through it.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        ttl: float = 3600.0,
        *,
        metadata_fallback: bool = True,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[str, DiscoveryError | None], None] | None = None,
    ) -> None:
        self._http = http
        self._observer = observer
        self.ttl = ttl
        self.metadata_fallback = metadata_fallback
        self.timeout = timeout
        self._clock = clock
        self._cache: dict[str, tuple[float, SMARTConfiguration]] = {}
        self._flight: SingleFlight[SMARTConfiguration] = SingleFlight()

    async def get(self, fhir_base_url: str) -> SMARTConfiguration:
        """The configuration of ``fhir_base_url``; :class:`DiscoveryError` if unusable."""
        base = normalize_issuer(fhir_base_url)
        cached = self._cache.get(base)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        return await self._flight.run(base, lambda: self._load(base))

    def invalidate(self, fhir_base_url: str | None = None) -> None:
        """Forget one cached configuration (or all), e.g. after the EHR moved endpoints."""
        if fhir_base_url is None:
            self._cache.clear()
        else:
            self._cache.pop(normalize_issuer(fhir_base_url), None)

    async def _load(self, base: str) -> SMARTConfiguration:
        try:
            config = await self._discover(base)
        except DiscoveryError as exc:
            if self._observer is not None:
                self._observer(base, exc)
            raise
        self._cache[base] = (self._clock() + self.ttl, config)
        if self._observer is not None:
            self._observer(base, None)
        return config

    async def _discover(self, base: str) -> SMARTConfiguration:
        url = base + WELL_KNOWN_PATH
        response = await self._get(base, url, _MAX_DISCOVERY_BYTES, "application/json")
        if response.status in (404, 410) and self.metadata_fallback:
            metadata = await self._get(
                base, base + "/metadata", _MAX_METADATA_BYTES, "application/fhir+json"
            )
            config = parse_capability_statement(base, self._json(base, metadata, "/metadata"))
            log.warning(
                "SMART discovery for %s: no %s, using the CapabilityStatement's oauth-uris "
                "(legacy; PKCE support cannot be confirmed)",
                base,
                WELL_KNOWN_PATH,
            )
            return config
        return parse_smart_configuration(base, self._json(base, response, WELL_KNOWN_PATH))

    async def _get(self, base: str, url: str, max_bytes: int, accept: str) -> Fetched:
        try:
            return await fetch(
                self._http,
                "GET",
                url,
                headers={"Accept": accept},
                timeout=self.timeout,
                max_bytes=max_bytes,
            )
        except FetchTimeout:
            raise _fail(
                base, f"{url} did not answer within {self.timeout:g} s.", status=504
            ) from None
        except BodyTooLarge:
            raise _fail(base, f"{url} answered more than {max_bytes} bytes.") from None
        except httpx.HTTPError as exc:
            raise _fail(base, f"could not reach {url} ({transport_failure(exc)}).") from None

    @staticmethod
    def _json(base: str, response: Fetched, path: str) -> Any:
        if response.status != 200:
            raise _fail(base, f"{path} answered HTTP {response.status}.")
        try:
            return response.json()
        except ValueError:
            raise _fail(base, f"{path} is not JSON ({response.media_type}).") from None
