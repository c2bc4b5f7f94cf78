"""SMARTAuthenticator: JupyterHub sign-in with SMART on FHIR (EHR launch and standalone).

It subclasses OAuthenticator's ``OAuthenticator`` so that the usual options
(``allowed_users``, ``allow_all``, ``admin_users``, ``manage_groups``,
``modify_auth_state_hook`` ...) keep working, and replaces the parts that are
wrong for SMART (see ``docs/admin-guide.md`` and the project's notes):

* one server-side pending-login record per authorization request, bound to
  the browser (:mod:`.pending`), instead of OAuthenticator's single state cookie;
* per-issuer endpoints from discovery, per-issuer client authentication
  (public, ``client_secret_basic``, ``private_key_jwt``), and an allow-list
  checked before any network request (:mod:`jupyterhub_smart.smart`);
* a verified id_token (OAuthenticator decodes it unverified);
* expiry-based refresh with one refresh per user in flight, shared with the
  token API; an EHR outage never signs a user out;
* auth_state holding only validated, JSON-serialisable fields.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from inspect import isawaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from jupyterhub.utils import url_path_join
from oauthenticator.oauth2 import OAuthenticator
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default, validate

from ..smart.client_auth import ClientAuthentication, PrivateKeyJWT, client_authentication_for
from ..smart.discovery import DiscoveryCache, SMARTConfiguration
from ..smart.errors import SMARTError, TokenEndpointError
from ..smart.id_token import JWKSCache, verify_id_token
from ..smart.issuers import IssuerPolicy, IssuerRegistration
from ..smart.launch_context import LaunchContext, fhir_user_reference
from ..smart.scopes import missing_scopes, require_scopes
from ..smart.singleflight import SingleFlight
from ..smart.tokens import TokenResponse, exchange_code, refresh_access_token, revoke_token
from .handlers import (
    SMARTCallbackHandler,
    SMARTJWKSHandler,
    SMARTLoginHandler,
    SMARTLogoutHandler,
    SMARTTokenAPIHandler,
)
from .pending import PendingLogin, PendingLogins
from .published_keys import jwk_set, load_published_keys
from .tokenstate import (
    SECRET_KEYS,
    AuthStateCache,
    ForcedRefresh,
    ForcedRefreshLimiter,
    MissingPatient,
    ReauthenticationRequired,
    RefreshRateLimited,
    fingerprint_matches,
)
from .username import default_username

__all__ = ["SMARTAuthenticator", "SMARTonFHIRAuthenticator"]

DEFAULT_SCOPE = ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "patient/*.rs"]


def _origin_ok(origin: str) -> bool:
    """An origin for CSP frame-ancestors: ``https://host[:port]``, nothing else."""
    parts = urlsplit(origin)
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and "*" not in origin
        and not parts.path
        and not parts.query
        and not parts.fragment
        and not parts.username
        and " " not in origin
        and ";" not in origin
    )


class SMARTAuthenticator(OAuthenticator):
    """Sign users in with SMART on FHIR App Launch (EHR launch and standalone launch)."""

    login_service = Unicode(
        "your EHR",
        config=True,
        help="Name of the EHR shown on the login button ('Sign in with <login_service>').",
    )

    issuers = Dict(
        config=True,
        help="""EHRs this hub is registered with, keyed by FHIR base URL (the `iss` of an EHR
        launch). Each value: {"client_id": ..., "client_auth": "public" | "client_secret_basic"
        | "private_key_jwt", "client_secret": ... (client_secret_basic), "private_key_path":
        ... (private_key_jwt), "key_id": ... (optional), "signing_alg": "RS384" | "ES384"
        (optional), "scope": "..." (optional, overrides `scope`)}. An `iss` not listed here is
        refused before any network request.""",
    )

    default_issuer = Unicode(
        "",
        config=True,
        help="""Issuer (a key of `issuers`) used for a standalone launch (a visit to
        /hub/oauth_login without `iss`). Empty: show a page to pick among the issuers.""",
    )

    scope = List(
        Unicode(),
        default_value=list(DEFAULT_SCOPE),
        config=True,
        help="""Scopes requested from the EHR (per-issuer `scope` overrides it). `launch` is
        sent only on EHR launches; `openid` makes the hub verify an id_token; `offline_access`
        gives a refresh token so notebooks outlive the first access token.""",
    )

    required_scopes = List(
        Unicode(),
        config=True,
        help="""Scopes the EHR must grant for a login to succeed (e.g. ["patient/*.rs"]). A
        granted wildcard covers a narrower required scope. Login fails with a page naming the
        missing ones.""",
    )

    refresh_leeway = Float(
        300.0,
        config=True,
        help="""Seconds before expiry at which an access token is refreshed, by refresh_user
        and by the token API. The token API hands out tokens valid for at least this long.""",
    )

    forced_refresh_interval = Float(
        30.0,
        config=True,
        help="""Seconds between two forced refreshes of one user's EHR token. A notebook whose
        access token the FHIR server refused (401) sends the token's SHA-256 to the token API,
        and the hub refreshes at once instead of handing the same token out until it expires
        (concurrent reports share one refresh). If the FHIR server refuses the new token too,
        further reports within this interval do not reach the EHR: the token API answers 429
        with Retry-After (or reauthentication_required again when the last forced refresh was
        refused). Bounds what a buggy or hostile client can make the hub ask of the EHR.""",
    )

    username_mapper = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""Callable (issuer, fhir_user, claims) -> username, replacing the default
        mapping `practitioner-123@ehr.example.org-fhir`. `fhir_user` is "Type/id" or None;
        `claims` the verified id_token claims ({} without openid). It may be async. Must be
        stable (same person, same name) and unique across issuers.""",
    )

    audit_log_path = Unicode(
        "jupyterhub-smart-audit.jsonl",
        config=True,
        help="""Path of the hash-chained audit log (JSON Lines), relative to the hub's working
        directory (next to jupyterhub.sqlite by default).""",
    )

    audit_sinks = List(
        Dict(),
        config=True,
        help="""Extra audit destinations, e.g. [{"type": "fhir", "url": ..., "token_url":
        ..., "client_id": ..., "client_secret_file": ...}] (see docs/audit.md).""",
    )

    discovery_ttl = Float(
        3600.0,
        config=True,
        help="Seconds the EHR's SMART configuration and JWKS are cached.",
    )

    http_timeout = Float(
        10.0,
        config=True,
        help="Seconds to wait for each back-channel request to an EHR (discovery, token, JWKS).",
    )

    login_timeout = Float(
        600.0,
        config=True,
        help="Seconds a started sign-in stays valid (between the EHR redirect and the callback).",
    )

    max_pending_logins = Integer(
        10000,
        config=True,
        help="Bound on sign-ins in flight at once (the oldest are dropped beyond it).",
    )

    allow_insecure_http = Bool(
        False,
        config=True,
        help="""Accept plain-http issuers that are not on a loopback host. Never in production:
        tokens would travel unencrypted.""",
    )

    frame_ancestors = List(
        Unicode(),
        config=True,
        help="""EHR origins (https://host[:port]) allowed to show the hub in an iframe. Sets
        the hub's Content-Security-Policy to `frame-ancestors 'self' <origins>` and its cookies
        to `SameSite=None; Secure` (needed inside a third-party iframe). Empty: JupyterHub's
        default (`frame-ancestors 'none'`). Requires https.""",
    )

    published_jwks = List(
        Unicode(),
        config=True,
        help="""Files of extra PUBLIC keys that /hub/smart/jwks.json serves next to the keys
        of the private_key_path files in use: a JWK Set (such as the jwks.json that
        `jupyterhub-smart keys generate` writes), a single JWK, or a PEM public key. For a
        rotation without failed logins: publish the successor key here, wait until EHRs that
        cache the hub's JWK Set have fetched it again, then switch private_key_path (and
        key_id) to it and keep the old public key listed until no EHR can still hold an
        assertion signed with it. Read at start-up; the hub refuses to start on a missing or
        malformed file, a private or symmetric key (members d, p, q, dp, dq, qi, oth, k), an
        RSA key under 2048 bits or EC key not on P-384, or a key id naming two different
        keys.""",
    )

    revoke_on_logout = Bool(
        True,
        config=True,
        help="Revoke the refresh token at the EHR on logout when it advertises revocation_endpoint.",
    )

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    login_handler = SMARTLoginHandler
    callback_handler = SMARTCallbackHandler
    logout_handler = SMARTLogoutHandler

    # OAuthenticator wants these; SMART takes them per issuer from discovery.
    @default("authorize_url")
    def _authorize_url_default(self) -> str:
        return ""

    @default("token_url")
    def _token_url_default(self) -> str:
        return ""

    @validate("frame_ancestors")
    def _validate_frame_ancestors(self, proposal: Any) -> list[str]:
        origins = [o.rstrip("/") for o in proposal["value"]]
        for origin in origins:
            if not _origin_ok(origin):
                raise ValueError(
                    f"SMARTAuthenticator.frame_ancestors: {origin!r} is not an https origin "
                    "(https://host[:port], no wildcard, no path)."
                )
        return origins

    @validate("username_mapper")
    def _validate_username_mapper(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and not callable(value):
            raise ValueError("SMARTAuthenticator.username_mapper must be a callable or None.")
        return value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.enable_auth_state:
            self._check_crypt_key()
        self.policy = IssuerPolicy(self.issuers, allow_insecure_http=self.allow_insecure_http)
        if self.default_issuer and self.default_issuer not in self.policy:
            raise ValueError(
                f"SMARTAuthenticator.default_issuer {self.default_issuer!r} is not one of "
                f"SMARTAuthenticator.issuers ({', '.join(self.policy.issuers) or 'none'})."
            )
        if not self.enable_auth_state:
            self.log.warning(
                "SMARTAuthenticator.enable_auth_state is off: EHR tokens are not kept, so "
                "notebooks get no FHIR access (the token API answers reauthentication_required)."
            )
        for reg in self.policy.registrations():
            never = missing_scopes(self.required_scopes, reg.scope or self.scope)
            if never:
                self.log.warning(
                    "required_scopes %s are not requested from %s: logins there will fail "
                    "unless the EHR grants them anyway",
                    " ".join(never),
                    reg.issuer,
                )
        # Load every client credential now: a bad key file stops the hub at start-up.
        self.clients: dict[str, ClientAuthentication] = {
            reg.issuer: client_authentication_for(reg) for reg in self.policy.registrations()
        }
        # ...and every published key: a private or clashing key stops it too.
        self._public_jwks = self._build_public_jwks()
        self.pending = PendingLogins(ttl=self.login_timeout, max_entries=self.max_pending_logins)
        self.refresh_flight: SingleFlight[dict[str, Any]] = SingleFlight()
        #: Decrypted auth_state reused while its ciphertext is unchanged (token API speed).
        self.auth_states = AuthStateCache()
        self.forced_refreshes = ForcedRefreshLimiter()
        # (username, issuer) pairs whose "EHR no longer configured" is on the audit trail
        # already: refresh_user and the token API both find out, and JupyterHub 5 runs
        # the first before the second, so each records through _note_removed_issuer.
        self._removed_issuer_noted: set[tuple[str, str]] = set()
        self._http: httpx.AsyncClient | None = None
        self._discovery: DiscoveryCache | None = None
        self._jwks: JWKSCache | None = None
        self._audit_log: Any = None
        #: Per-process salt for token fingerprints in the audit log (never written anywhere).
        self._fingerprint_salt = secrets.token_bytes(32)

    @staticmethod
    def _check_crypt_key() -> None:
        """Refuse to start without JUPYTERHUB_CRYPT_KEY: tokens must be stored encrypted."""
        from jupyterhub.crypto import CryptKeeper, EncryptionUnavailable, NoEncryptionKeys

        try:
            CryptKeeper.instance().check_available()
        except (NoEncryptionKeys, EncryptionUnavailable) as exc:
            raise ValueError(
                "SMARTAuthenticator stores EHR tokens in auth_state, which JupyterHub encrypts "
                "with JUPYTERHUB_CRYPT_KEY, and that is not set or unusable "
                f"({type(exc).__name__}). Set it, e.g. "
                "`export JUPYTERHUB_CRYPT_KEY=$(openssl rand -hex 32)`, and keep it secret "
                "(Zero to JupyterHub sets it for you)."
            ) from None

    # ------------------------------------------------------------------ plumbing

    @property
    def http(self) -> httpx.AsyncClient:
        """One HTTP client for every EHR (TLS verified, no redirects followed)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.http_timeout,
                follow_redirects=False,
                headers={"User-Agent": "jupyterhub-smart"},
            )
        return self._http

    @property
    def discovery(self) -> DiscoveryCache:
        if self._discovery is None:
            self._discovery = DiscoveryCache(
                self.http, ttl=self.discovery_ttl, timeout=self.http_timeout
            )
        return self._discovery

    @property
    def jwks(self) -> JWKSCache:
        if self._jwks is None:
            self._jwks = JWKSCache(self.http, ttl=self.discovery_ttl, timeout=self.http_timeout)
        return self._jwks

    def registration(self, iss: str) -> IssuerRegistration:
        """The registration of ``iss``; UnknownIssuer, never a network request."""
        return self.policy.get(iss)

    def scope_for(self, reg: IssuerRegistration, *, ehr_launch: bool) -> tuple[str, ...]:
        """Scopes to request: the issuer's or the default; ``launch`` only for EHR launches."""
        scope = list(reg.scope or self.scope)
        if not ehr_launch:
            scope = [s for s in scope if s != "launch"]
        elif "launch" not in scope:
            scope.append("launch")
        return tuple(dict.fromkeys(scope))

    def _build_public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """Signing keys in use first, then ``published_jwks``; ValueError names a bad one."""
        in_use = [
            (f"the private_key_path of {issuer}", client.public_jwk())
            for issuer, client in self.clients.items()
            if isinstance(client, PrivateKeyJWT)
        ]
        try:
            return jwk_set([*in_use, *load_published_keys(self.published_jwks)])
        except ValueError as exc:
            raise ValueError(f"SMARTAuthenticator JWK Set: {exc}") from None

    def public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """The hub's JWK Set: keys signing now and keys published (never private parts)."""
        return {"keys": [dict(jwk) for jwk in self._public_jwks["keys"]]}

    def get_handlers(self, app: Any) -> list[tuple[str, type]]:
        self._configure_framing(app)
        handlers: list[tuple[str, type]] = [
            *super().get_handlers(app),
            (r"/api/smart/token", SMARTTokenAPIHandler),
            (r"/smart/jwks\.json", SMARTJWKSHandler),
        ]
        try:
            from .audit_handlers import audit_handlers
        except ImportError:  # the audit handler is optional
            audit_handlers = []
        handlers.extend(audit_handlers)
        return handlers

    def _configure_framing(self, app: Any) -> None:
        """CSP frame-ancestors for the configured EHR origins, and cookies fit for an iframe.

        An admin-set Content-Security-Policy in ``tornado_settings['headers']`` wins.
        """
        if not self.frame_ancestors:
            return
        settings = app.tornado_settings
        headers = settings.setdefault("headers", {})
        if "Content-Security-Policy" not in headers:
            headers["Content-Security-Policy"] = "frame-ancestors 'self' " + " ".join(
                self.frame_ancestors
            )
        cookie_options = settings.setdefault("cookie_options", {})
        cookie_options.setdefault("samesite", "None")
        cookie_options.setdefault("secure", True)
        xsrf = settings.setdefault("xsrf_cookie_kwargs", {})
        xsrf.setdefault("samesite", "None")
        xsrf.setdefault("secure", True)

    # ------------------------------------------------------------------ audit

    def get_audit_log(self) -> Any:
        """The hub's one AuditLog, opened on first use (also used by the audit handler)."""
        if self._audit_log is None:
            from ..audit import AuditLog, build_sinks

            path = Path(self.audit_log_path).absolute()
            sinks = build_sinks(self.audit_sinks, path.parent) if self.audit_sinks else []
            self._audit_log = AuditLog(path, sinks=sinks)
        return self._audit_log

    async def audit(self, event: Mapping[str, Any]) -> None:
        """Record an event; raises AuditUnavailable only for access-granting events."""
        from ..audit import record_or_refuse

        await record_or_refuse(self.get_audit_log(), event)

    async def audit_event(self, action: str, **fields: Any) -> None:
        """Build and record a hub event; a bad field is logged, never raised at the user."""
        from ..audit import AuditUnavailable, hub_event

        try:
            event = hub_event(action, **fields)
        except (ValueError, TypeError) as exc:
            self.log.error("Could not build audit event %s: %s", action, exc)
            return
        try:
            await self.audit(event)
        except AuditUnavailable:
            raise
        except Exception as exc:  # the trail must not take the hub down
            self.log.error("Could not record audit event %s: %s", action, type(exc).__name__)

    def token_hash(self, token: str) -> str:
        from ..audit import token_fingerprint

        return token_fingerprint(token, self._fingerprint_salt)

    # ------------------------------------------------------------------ login

    async def authenticate(
        self, handler: Any, data: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Finish a SMART login: code exchange, id_token, scopes, context, username.

        ``data`` comes from the callback handler: ``pending`` (the PendingLogin),
        ``code`` and ``config`` (the issuer's discovered configuration). Raises
        SMARTError, which the callback handler renders.
        """
        if not data or not isinstance(data.get("pending"), PendingLogin):
            raise SMARTError("Sign in through the EHR or the login page.", status=400)
        pending: PendingLogin = data["pending"]
        config: SMARTConfiguration = data["config"]
        reg = self.registration(pending.issuer)
        token = await exchange_code(
            self.http,
            config,
            self.clients[reg.issuer],
            code=data["code"],
            redirect_uri=self.get_callback_url(handler),
            code_verifier=pending.code_verifier,
            requested_scope=pending.scope,
            timeout=self.http_timeout,
        )
        claims: dict[str, Any] = {}
        if "openid" in pending.scope:
            claims = await verify_id_token(
                token.id_token or "",
                config=config,
                client_id=reg.client_id,
                jwks=self.jwks,
                nonce=pending.nonce,
            )
        require_scopes(self.required_scopes, token.scope)
        not_granted = missing_scopes(pending.scope, token.scope)
        if not_granted:  # allowed (the EHR decides), but worth knowing when data is missing
            self.log.info(
                "The EHR %s granted less than requested; not granted: %s",
                reg.issuer,
                " ".join(not_granted),
            )
        context = LaunchContext.from_token_response(token.raw)
        if "launch/patient" in pending.scope and context.patient is None:
            raise MissingPatient(
                "The EHR did not choose a patient for this sign-in although the hub asked for "
                "one (launch/patient). Launch the app again from a patient's chart, or pick a "
                "patient when the EHR asks."
            )
        fhir_user = fhir_user_reference(claims) if claims else None
        sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        username = await self._username(reg.issuer, fhir_user, sub, claims)
        auth_state = self._auth_state(reg, config, token, context, fhir_user, sub)
        if self.modify_auth_state_hook is not None:
            auth_state = await self._call_modify_auth_state_hook(auth_state)
        auth_model: dict[str, Any] = {
            "name": username,
            "admin": True if username in self.admin_users else None,
            "auth_state": auth_state,
        }
        auth_model = await self.update_auth_model(auth_model)
        if self.manage_groups:
            auth_model = await self._apply_managed_groups(auth_model)
        return auth_model

    async def _username(
        self, issuer: str, fhir_user: str | None, sub: str | None, claims: Mapping[str, Any]
    ) -> str:
        if self.username_mapper is not None:
            name = self.username_mapper(issuer, fhir_user, dict(claims))
            if isawaitable(name):
                name = await name
            if not isinstance(name, str) or not name:
                raise SMARTError(
                    "The hub's username_mapper returned no username; ask the administrators.",
                    status=500,
                    error="username_mapper_failed",
                )
            return name
        if not fhir_user and not sub:
            raise SMARTError(
                "The EHR did not say who you are (no fhirUser, no sub); ask the hub's "
                "administrators to request the 'openid fhirUser' scopes.",
                status=403,
                error="no_user_identity",
            )
        return default_username(issuer, fhir_user, sub)

    def _auth_state(
        self,
        reg: IssuerRegistration,
        config: SMARTConfiguration,
        token: TokenResponse,
        context: LaunchContext,
        fhir_user: str | None,
        sub: str | None,
    ) -> dict[str, Any]:
        """The JSON-serialisable auth_state JupyterHub encrypts and stores."""
        state: dict[str, Any] = {
            "iss": reg.issuer,
            "fhir_base_url": config.fhir_base_url,
            "authorization_server": config.issuer,
            "access_token": token.access_token,
            "token_type": token.token_type,
            "refresh_token": token.refresh_token,
            "expires_at": token.expires_at,
            "scope": list(token.scope),
            "fhirUser": fhir_user,
            "sub": sub,
            "issued_at": time.time(),
        }
        state.update(context.to_dict())
        return state

    async def get_authenticated_user(
        self, handler: Any, data: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """JupyterHub's login pipeline, with the outcome recorded in the audit trail.

        ``login-succeeded`` is recorded before the hub creates the session: if
        the trail cannot be written the login is refused (fail closed).
        """
        model = await super().get_authenticated_user(handler, data)
        pending = (data or {}).get("pending")
        issuer = pending.issuer if isinstance(pending, PendingLogin) else None
        client = _client_fields(handler)
        if model is None:
            await self.audit_event(
                "login-failed",
                outcome="failure",
                description="refused by the hub's user policy (allowed/blocked users)",
                issuer=issuer,
                **client,
            )
            return None
        state = model.get("auth_state") or {}
        await self.audit_event(
            "login-succeeded",
            username=model["name"],
            fhir_user=state.get("fhirUser"),
            issuer=issuer,
            patient=_patient_ref(state.get("patient")),
            encounter=_ref("Encounter", state.get("encounter")),
            scopes_requested=list(pending.scope) if isinstance(pending, PendingLogin) else None,
            scopes_granted=state.get("scope"),
            **client,
        )
        self.log.info(
            "SMART login of %s via %s (patient %s)",
            model["name"],
            issuer,
            state.get("patient") or "none",
        )
        return dict(model)

    async def check_blocked_users(self, username: str, authentication: Any = None) -> bool:
        """Issuer restrictions, enforced where ``allow_all`` cannot skip them."""
        allowed = await _maybe_await(super().check_blocked_users(username, authentication))
        if not allowed:
            return False
        state = (authentication or {}).get("auth_state") if authentication else None
        if isinstance(state, Mapping):
            iss = state.get("iss")
            if not isinstance(iss, str) or iss not in self.policy:
                self.log.warning("Refusing %s: issuer is not (or no longer) configured", username)
                return False
        return True

    # ------------------------------------------------------------------ refresh

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        """Expiry-based refresh (no userinfo probe).

        True: nothing to do (or the EHR is unreachable: keep the state and retry
        later); a dict: the refreshed auth_state; False: the user must sign in
        again (refresh refused with invalid_grant, or no refresh token left).
        """
        state = await user.get_auth_state()
        if not isinstance(state, Mapping) or not state.get("access_token"):
            return True
        iss = state.get("iss")
        if not isinstance(iss, str) or iss not in self.policy:
            self.log.warning("Signing %s out: their EHR is no longer configured", user.name)
            await self._note_removed_issuer(user.name, state)
            return False
        if not _expires_within(state, self.refresh_leeway):
            return True
        from ..audit import AuditUnavailable

        try:
            fresh = await self.fresh_auth_state(user, min_validity=self.refresh_leeway)
        except ReauthenticationRequired:
            return False
        except SMARTError:
            return True  # logged in fresh_auth_state; the token API reports it
        except AuditUnavailable:
            # The refreshed tokens are stored (the EHR rotated the refresh token: dropping
            # them would end the session); only the record is held back until the disk
            # accepts it. Nothing is handed out here, and the token API refuses (503)
            # while the trail cannot record the hand-out.
            self.log.error(
                "Refreshed the SMART tokens of %s but the audit trail is unavailable", user.name
            )
            return True
        return {"auth_state": fresh}

    async def _note_removed_issuer(self, username: str, state: Mapping[str, Any]) -> None:
        """Put "EHR no longer configured" on the audit trail once per user and issuer."""
        iss = state.get("iss")
        key = (username, iss if isinstance(iss, str) else "")
        if key in self._removed_issuer_noted:
            return
        self._removed_issuer_noted.add(key)
        await self.audit_event(
            "reauthentication-required",
            outcome="failure",
            description="the EHR this user signed in with is no longer configured on this hub",
            username=username,
            fhir_user=state.get("fhirUser"),
            issuer=key[1] or None,
        )

    async def fresh_auth_state(
        self, user: Any, *, min_validity: float, rejected: str | None = None
    ) -> dict[str, Any]:
        """The user's auth_state with an access token valid for ``min_validity`` s.

        Refreshes when needed, at most once per user at a time (refresh_user
        and the token API share the flight). ``rejected``: the SHA-256 of an
        access token the FHIR server refused; when it is the current token, the
        refresh is forced (rate-limited per user, see forced_refresh_interval).
        Raises ReauthenticationRequired when the user must sign in again,
        RefreshRateLimited, or another SMARTError when the EHR is unavailable
        and the current token does not last long enough (or was refused).
        """
        state = await self.auth_states.get(user)
        if not isinstance(state, Mapping) or not state.get("access_token"):
            raise ReauthenticationRequired("No SMART tokens for this user: sign in again.")
        iss = state.get("iss")
        if not isinstance(iss, str) or iss not in self.policy:
            # The admin removed this EHR: its tokens are not handed out any more, even
            # while they are valid (JupyterHub keeps token-authenticated requests of a
            # user whose refresh_user said False, unless auth_refresh_strict).
            self.log.warning("Token API: %s signed in at an EHR no longer configured", user.name)
            await self._note_removed_issuer(user.name, state)
            raise ReauthenticationRequired(
                "The EHR you signed in with is no longer configured on this hub: sign in again.",
                recorded=True,
            )
        forced = rejected is not None and fingerprint_matches(state["access_token"], rejected)
        if not forced and not _expires_within(state, min_validity):
            return dict(state)
        if forced and not self.refresh_flight.in_flight(user.name):
            assert rejected is not None
            last = self.forced_refreshes.recent(user.name, self.forced_refresh_interval)
            if last is not None:
                return await self._forced_too_soon(user, rejected, last)
            self.forced_refreshes.started(user.name, rejected)
        try:
            return await self.refresh_flight.run(
                user.name, lambda: self._refresh(user, rejected=rejected if forced else None)
            )
        except ReauthenticationRequired as exc:
            if forced:
                assert rejected is not None
                self.forced_refreshes.failed(user.name, rejected, exc)
            raise
        except SMARTError as exc:
            if forced:
                assert rejected is not None
                self.forced_refreshes.failed(user.name, rejected, exc)
                raise  # the current token was refused: never hand it out again
            current = await user.get_auth_state()
            if isinstance(current, Mapping) and not _expires_within(current, 0):
                return dict(current)  # still valid, just short: better than nothing
            raise

    async def _forced_too_soon(
        self, user: Any, rejected: str, last: ForcedRefresh
    ) -> dict[str, Any]:
        """A refused token reported within forced_refresh_interval of the last forced refresh."""
        current = await self.auth_states.get(user)
        token = (current or {}).get("access_token")
        if isinstance(token, str) and token and not fingerprint_matches(token, rejected):
            return dict(current or {})  # refreshed meanwhile: the report is about an old token
        if last.fingerprint == rejected and isinstance(last.failure, ReauthenticationRequired):
            raise ReauthenticationRequired(str(last.failure))
        retry_after = self.forced_refresh_interval - (time.monotonic() - last.at)
        self.log.warning(
            "Token API: %s reported a refused token again within %.0f s of a forced refresh; "
            "not asking the EHR",
            user.name,
            self.forced_refresh_interval,
        )
        if last.fingerprint == rejected and last.failure is not None:
            raise RefreshRateLimited(
                "The hub tried to refresh this refused access token moments ago and the EHR did "
                f"not answer ({last.failure.error}); it tries again in {retry_after:.0f} s.",
                retry_after=retry_after,
            )
        raise RefreshRateLimited(
            "The FHIR server refused the access token the hub refreshed moments ago; the hub "
            f"will not refresh it again for {retry_after:.0f} s. If this keeps happening, the "
            "FHIR server does not accept this EHR session's tokens: tell the hub's administrators.",
            retry_after=retry_after,
        )

    async def _refresh(self, user: Any, rejected: str | None = None) -> dict[str, Any]:
        """One refresh for ``user`` (run inside the single flight), persisted at once.

        ``rejected``: forced because the FHIR server refused the token with this
        SHA-256 (refresh even though it has not expired, unless it was replaced).
        """
        state = dict(await user.get_auth_state() or {})
        token = state.get("access_token")
        refused = (
            isinstance(token, str) and rejected is not None and fingerprint_matches(token, rejected)
        )
        if token and not refused and not _expires_within(state, self.refresh_leeway):
            return state  # a flight that just finished already refreshed it
        forced = " (forced: the FHIR server refused the access token)" if refused else ""
        refresh_token = state.get("refresh_token")
        iss = state.get("iss")
        if not isinstance(iss, str) or iss not in self.policy:
            raise ReauthenticationRequired("Your EHR is no longer configured on this hub.")
        if not refresh_token:
            await self.audit_event(
                "reauthentication-required",
                outcome="failure",
                description="access token expiring and no refresh token" + forced,
                username=user.name,
                fhir_user=state.get("fhirUser"),
                issuer=iss,
            )
            raise ReauthenticationRequired(
                "Your EHR session has expired and the EHR gave no refresh token: sign in again.",
                recorded=True,
            )
        reg = self.registration(iss)
        try:
            config = await self.discovery.get(reg.issuer)
            token = await refresh_access_token(
                self.http,
                config,
                self.clients[reg.issuer],
                refresh_token,
                requested_scope=state.get("scope") or None,
                timeout=self.http_timeout,
            )
        except TokenEndpointError as exc:
            if exc.oauth_error in ("invalid_grant", "invalid_client", "unauthorized_client"):
                self.log.warning("Refresh for %s refused by the EHR%s: %s", user.name, forced, exc)
                await self.audit_event(
                    "reauthentication-required",
                    outcome="failure",
                    description=str(exc) + forced,
                    username=user.name,
                    fhir_user=state.get("fhirUser"),
                    issuer=iss,
                )
                if refused:
                    # The FHIR server refused the token and the EHR the refresh: the grant is
                    # over. Drop the dead tokens so every kernel of the user hears it next time.
                    kept = {k: v for k, v in state.items() if k not in SECRET_KEYS}
                    kept["expires_at"] = 0
                    await user.save_auth_state(kept)
                raise ReauthenticationRequired(
                    "The EHR no longer accepts this session: sign in again.", recorded=True
                ) from None
            self.log.error("Refresh for %s failed, keeping the session: %s", user.name, exc)
            await self.audit_event(
                "refresh-failed",
                outcome="failure",
                description=str(exc) + forced,
                username=user.name,
                issuer=iss,
            )
            raise
        except SMARTError as exc:
            self.log.error("Refresh for %s failed, keeping the session: %s", user.name, exc)
            await self.audit_event(
                "refresh-failed",
                outcome="failure",
                description=str(exc) + forced,
                username=user.name,
                issuer=iss,
            )
            raise
        state.update(
            access_token=token.access_token,
            token_type=token.token_type,
            issued_at=time.time(),
            expires_at=token.expires_at,
            scope=list(token.scope),
        )
        if token.refresh_token:  # rotated; without one the old stays valid
            state["refresh_token"] = token.refresh_token
        await user.save_auth_state(state)
        await self.audit_event(
            "token-refreshed",
            username=user.name,
            fhir_user=state.get("fhirUser"),
            issuer=iss,
            patient=_patient_ref(state.get("patient")),
            scopes_granted=state["scope"],
            token_hash=self.token_hash(token.access_token),
            description=forced.strip(" ()") or None,
        )
        self.log.info("Refreshed the SMART access token of %s%s", user.name, forced)
        return state

    # ------------------------------------------------------------------ spawn, logout

    async def pre_spawn_start(self, user: Any, spawner: Any) -> None:
        """Tell the single-user server where the token API is; never a token."""
        await _maybe_await(super().pre_spawn_start(user, spawner))
        spawner.environment["SMART_TOKEN_API_URL"] = url_path_join(
            spawner.hub.api_url, "smart/token"
        )

    async def revoke_and_forget(self, user: Any) -> None:
        """Logout: revoke the refresh token where the EHR supports it, drop the tokens."""
        state = await user.get_auth_state()
        if not isinstance(state, Mapping) or not state.get("iss"):
            return
        iss = state["iss"]
        refresh_token = state.get("refresh_token")
        revoked = False
        if self.revoke_on_logout and refresh_token and iss in self.policy:
            reg = self.registration(iss)
            try:
                config = await self.discovery.get(reg.issuer)
                revoked = await revoke_token(
                    self.http, config, self.clients[reg.issuer], refresh_token
                )
            except SMARTError as exc:
                self.log.warning("Could not revoke the refresh token of %s: %s", user.name, exc)
        if revoked:
            await self.audit_event(
                "token-revoked", username=user.name, fhir_user=state.get("fhirUser"), issuer=iss
            )
        kept = {k: v for k, v in state.items() if k not in SECRET_KEYS}
        kept["expires_at"] = 0
        await user.save_auth_state(kept)
        self.auth_states.forget(user.name)


SMARTonFHIRAuthenticator = SMARTAuthenticator


def _expires_within(state: Mapping[str, Any], seconds: float) -> bool:
    """True when the access token expires within ``seconds``.

    The leeway is capped at half the token's lifetime: an EHR that issues
    tokens shorter than the leeway would otherwise make every call refresh.
    """
    expires_at = state.get("expires_at")
    if not isinstance(expires_at, (int, float)):
        return False  # the EHR did not say: use it until the FHIR server refuses it
    issued_at = state.get("issued_at")
    if isinstance(issued_at, (int, float)) and expires_at > issued_at:
        seconds = min(seconds, (float(expires_at) - float(issued_at)) / 2)
    return float(expires_at) - time.time() <= seconds


def _patient_ref(patient: object) -> str | None:
    return _ref("Patient", patient)


def _ref(rtype: str, value: object) -> str | None:
    return f"{rtype}/{value}" if isinstance(value, str) and value else None


def _client_fields(handler: Any) -> dict[str, Any]:
    request = getattr(handler, "request", None)
    if request is None:
        return {}
    return {
        "client_address": request.remote_ip,
        "user_agent": (request.headers.get("User-Agent") or "")[:200] or None,
    }


async def _maybe_await(value: Any) -> Any:
    if isawaitable(value):
        return await value
    return value
