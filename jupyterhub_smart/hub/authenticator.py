"""SMARTAuthenticator: JupyterHub sign-in with SMART on FHIR (EHR launch and standalone).

This module holds the options and the hooks JupyterHub calls, like an
OAuthenticator provider module. It subclasses OAuthenticator's
``OAuthenticator`` so that the usual options (``allowed_users``, ``allow_all``,
``admin_users``, ``manage_groups``, ``modify_auth_state_hook``,
``refresh_user_hook`` ...) keep working; the inherited options it does not use
stop the hub at start-up (:mod:`.inherited`). What differs from OAuthenticator
lives in its own modules:

* :mod:`.login`: one server-side pending-login record per authorization
  request, bound to the browser (:mod:`.pending`), instead of OAuthenticator's
  single state cookie; an allow-list checked before any network request;
* :mod:`.ehr`: per-issuer endpoints from discovery and per-issuer client
  authentication (public, ``client_secret_basic``, ``private_key_jwt``);
* :mod:`.refresh`: expiry-based refresh with one refresh per user in flight,
  shared with the token API (:mod:`.token_api`); an EHR outage never signs a
  user out;
* :mod:`.logout`: the refresh token revoked at the EHR;
* :mod:`.trail`: every step in the hash-chained audit trail;
* :mod:`.framing`: embedding in the EHR's iframe;
* a verified id_token (OAuthenticator decodes it unverified), and auth_state
  holding only validated, JSON-serialisable fields (:mod:`.tokenstate`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from inspect import isawaitable
from pathlib import Path
from typing import Any

from jupyterhub import orm
from jupyterhub.crypto import CryptKeeper, EncryptionUnavailable, NoEncryptionKeys
from jupyterhub.utils import url_path_join
from oauthenticator.oauth2 import OAuthenticator
from traitlets import Bool, Callable, Dict, Float, Integer, List, Unicode, default, validate

from ..audit import AuditLog, build_sinks
from ..smart.discovery import SMARTConfiguration
from ..smart.errors import SMARTError
from ..smart.id_token import verify_id_token
from ..smart.issuers import IssuerPolicy, IssuerRegistration
from ..smart.launch_context import LaunchContext, fhir_user_reference
from ..smart.scopes import missing_scopes, require_scopes
from ..smart.tls import ca_bundle_context
from ..smart.tokens import exchange_code
from .audit_budget import AuditBudget
from .audit_handlers import audit_handlers
from .audit_page import audit_page_handlers
from .audit_review import AuditReviewSettings
from .audit_settings import AuditSettings
from .backoff import RefreshBackoff
from .database import DatabaseHealth
from .ehr import EHRConnections
from .errors import MissingPatient
from .framing import allow_framing, frame_ancestor_origins
from .grants import holds_tokens
from .health import Readiness, health_handlers
from .inactivity import InactivityLogoff
from .inherited import REFUSED, refusal_lines
from .login import SMARTCallbackHandler, SMARTLoginHandler
from .logout import SMARTLogoutHandler
from .metrics import watch_audit
from .pending import PendingLogin, PendingLogins
from .proxy_mode import FHIRAccessOptions, proxy_environment, register_proxy_service
from .proxy_records import proxy_records_handlers
from .published_keys import SMARTJWKSHandler, jwk_set, load_published_keys
from .refresh import TokenRefresher
from .scopes import define_smart_scopes, register_smart_scopes
from .sealed import RefreshTokenSeal
from .spill import TokenSpill
from .token_api import SMARTTokenAPIHandler
from .token_lookup import APITokenLookup
from .tokenstate import new_auth_state
from .trail import HubTrail, client_fields, reference
from .username import colliding_issuers, default_username
from .withdrawal import withdraw_at_start_up

__all__ = ["SMARTAuthenticator"]

DEFAULT_SCOPE = ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "patient/*.rs"]


class SMARTAuthenticator(AuditSettings, AuditReviewSettings, FHIRAccessOptions, OAuthenticator):
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

    refresh_backoff_initial = Float(
        5.0,
        min=0.001,
        config=True,
        help="""Seconds the hub waits, after a failed refresh at an EHR, before it asks that
        EHR again. The wait doubles with each failure in a row, up to refresh_backoff_max, and
        ends with the first refresh that works. An outage (no answer, a timeout, a 5xx) holds
        back the whole EHR; other failures hold back that user alone. Meanwhile the token API
        hands out a still-valid access token, or answers 503 with Retry-After, and each wait
        is one `refresh-failed` audit record counting the requests it turned away.""",
    )

    refresh_backoff_max = Float(
        300.0,
        min=0.001,
        config=True,
        help="""Longest wait in seconds between two refresh attempts at a failing EHR (see
        refresh_backoff_initial).""",
    )

    username_mapper = Callable(
        None,
        allow_none=True,
        config=True,
        help="""Callable (issuer, fhir_user, claims) -> username, replacing the default
        mapping `practitioner-123@ehr.example.org-fhir`. `fhir_user` is "Type/id" or None;
        `claims` the verified id_token claims ({} without openid). It may be async. Must be
        stable (same person, same name) and unique across issuers: keep the issuer in the
        name, and do not fold ids that differ only in case. With it set, the start-up check
        that configured issuers give distinct default usernames is skipped.""",
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
        help="""Seconds to wait for each back-channel request to an EHR (discovery, JWKS,
        revocation); the token endpoint has token_timeout.""",
    )

    token_timeout = Float(
        120.0,
        min=0.001,
        config=True,
        help="""Seconds the hub waits for the EHR's token endpoint to answer a code exchange
        (sign-in) or a refresh; http_timeout is for the other back-channel requests. Longer on
        purpose: the EHR spends the code, or a rotating refresh token, as it answers, so an
        answer the hub gave up on is a failed sign-in (and a grant nobody holds) or a user who
        must sign in again. A refresh runs in its own task and stores whatever arrives in
        time; callers wait at most refresh_wait.""",
    )

    refresh_wait = Float(
        10.0,
        min=0.001,
        config=True,
        help="""Seconds a token API call (or JupyterHub's refresh_user) waits for a refresh in
        flight. Then it gets the current access token if that is still valid, else 503 with
        Retry-After; the refresh goes on (token_timeout), and calls arriving meanwhile wait
        for the same refresh instead of starting another.""",
    )

    shutdown_grace = Float(
        20.0,
        min=0.0,
        config=True,
        help="""Seconds a refresh still at the EHR when the hub is told to stop (SIGTERM,
        SIGINT) may go on, so that the EHR's answer is stored: an EHR that rotates refresh
        tokens has spent the old one by the time it answers, and a hub that dropped the answer
        would leave the user a spent refresh token (the grant ends at the next refresh). The
        hub exits once such refreshes end, or after this many seconds. Keep it below the time
        the platform waits between SIGTERM and SIGKILL (Kubernetes:
        terminationGracePeriodSeconds, 30 s by default).""",
    )

    unsaved_tokens_dir = Unicode(
        "jupyterhub-smart-unsaved",
        config=True,
        help="""Folder (relative to the hub's working directory) where refreshed EHR tokens the
        hub database did not take (an outage) wait, encrypted under a key derived from
        JUPYTERHUB_CRYPT_KEY, until it does: a hub killed meanwhile takes them back at
        start-up instead of leaving users with a spent refresh token. Put it on a persistent
        volume (with Zero to JupyterHub, next to the audit log). Empty for none.""",
    )

    login_timeout = Float(
        600.0,
        config=True,
        help="Seconds a started sign-in stays valid (between the EHR redirect and the callback).",
    )

    max_pending_logins = Integer(
        10000,
        config=True,
        help="""Bound on sign-ins in flight at once (started, callback not yet reached). Beyond
        it a new sign-in is refused (503 with Retry-After); one in flight is never dropped, so
        a flood cannot evict a real user's sign-in waiting on the EHR's consent page.""",
    )

    max_pending_logins_per_client = Integer(
        100,
        min=1,
        config=True,
        help="""Bound on sign-ins in flight at once from one client address (see
        docs/security.md for how the address is found behind proxies). Beyond it a new
        sign-in from that address is refused (429 with Retry-After). Raise it when many
        users share one address (a hospital's NAT) and start sign-ins within
        login_timeout of each other.""",
    )

    unauthenticated_audit_window = Float(
        60.0,
        min=1.0,
        config=True,
        help="""Seconds of one audit budget window for records caused by unauthenticated
        requests (launch-received, issuer-refused, and refused sign-ins before a hub user
        exists). Within a window each client address gets
        unauthenticated_audit_records records written one by one (the hub ten times that in
        all); further requests are counted and recorded as one summary per address when the
        window ends, so a flood neither fills the disk nor goes unrecorded.""",
    )

    unauthenticated_audit_records = Integer(
        10,
        min=1,
        config=True,
        help="""Records per client address and unauthenticated action written one by one in
        each unauthenticated_audit_window (see there).""",
    )

    allow_insecure_http = Bool(
        False,
        config=True,
        help="""Accept plain-http issuers that are not on a loopback host. Never in production:
        tokens would travel unencrypted.""",
    )

    ehr_ca_bundle = Unicode(
        "",
        config=True,
        help="""Path of a PEM file of the CA certificates that sign the EHRs' TLS certificates,
        for EHRs whose certificates come from a hospital's internal CA (no public bundle holds
        it, so without this the hub cannot reach them). Used for every connection to an EHR:
        the hub's (discovery, JWKS, token endpoint, revocation) and, in proxy mode, the FHIR
        proxy's. The file replaces the default trust for those connections; to trust public
        CAs too, append certifi's bundle (`python -m certifi` prints its path). Verification
        always stays on. Read at start-up: the hub refuses to start when the file is missing,
        unreadable, not PEM, holds no CA certificate, or holds a private key. Empty (default):
        the hub trusts certifi's public CAs (or SSL_CERT_FILE / SSL_CERT_DIR from its
        environment) and the proxy certifi's alone.""",
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

    inactivity_timeout = Float(
        0.0,
        config=True,
        help="""Automatic logoff (HIPAA 164.312(a)(2)(iii)): seconds without activity after
        which a user's EHR grant ends: the refresh token is revoked at the EHR, the tokens are
        dropped, every browser session at the hub ends, and `automatic-logoff` is recorded.
        Activity: browser requests to the hub, the user's servers' activity reports, and token
        API calls (a kernel that keeps fetching data keeps its user signed in). Checked every
        tenth of the timeout (at least every 30 s). 0 (default): off. docs/security.md
        recommends 900 (15 minutes); keep it well above JupyterHub's activity_resolution
        and the servers' activity report interval (JUPYTERHUB_ACTIVITY_INTERVAL, 300 s).""",
    )

    @validate("inactivity_timeout")
    def _validate_inactivity_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value < 0:
            raise ValueError("SMARTAuthenticator.inactivity_timeout must be 0 (off) or positive")
        return value

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    login_handler = SMARTLoginHandler
    callback_handler = SMARTCallbackHandler
    logout_handler = SMARTLogoutHandler

    @validate("frame_ancestors")
    def _validate_frame_ancestors(self, proposal: Any) -> list[str]:
        return frame_ancestor_origins(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        # Registered before the configuration is loaded, as OAuthenticator does for its
        # deprecated options, so that every value set in a config file is seen.
        self._refused_settings: list[str] = []
        self.observe(self._note_refused_setting, names=list(REFUSED))
        super().__init__(**kwargs)
        # Defined now (JupyterHub builds this authenticator while loading roles), so that
        # an admin's load_roles may grant them, e.g. to a trusted service.
        define_smart_scopes()
        refused = refusal_lines(self._refused_settings, lambda name: getattr(self, name))
        if refused:
            raise ValueError("\n".join(refused))
        if self.enable_auth_state:
            self._check_crypt_key()
        policy = IssuerPolicy(self.issuers, allow_insecure_http=self.allow_insecure_http)
        if self.default_issuer and self.default_issuer not in policy:
            raise ValueError(
                f"SMARTAuthenticator.default_issuer {self.default_issuer!r} is not one of "
                f"SMARTAuthenticator.issuers ({', '.join(policy.issuers) or 'none'})."
            )
        clashes: list[tuple[str, str]] = (
            colliding_issuers(policy.issuers) if self.username_mapper is None else []
        )
        if clashes:
            raise ValueError(
                "SMARTAuthenticator.issuers: the default usernames of these EHRs' users would "
                "be the same (the issuer part of a username is lower-cased and '/' becomes "
                "'-'): "
                + "; ".join(f"{a!r} and {b!r}" for a, b in clashes)
                + ". Set SMARTAuthenticator.username_mapper to a mapping that keeps them apart."
            )
        if not self.enable_auth_state:
            self.log.warning(
                "SMARTAuthenticator.enable_auth_state is off: EHR tokens are not kept, so "
                "notebooks get no FHIR access (the token API answers reauthentication_required)."
            )
        for reg in policy.registrations():
            never = missing_scopes(self.required_scopes, reg.scope or self.scope)
            if never:
                self.log.warning(
                    "required_scopes %s are not requested from %s: logins there will fail "
                    "unless the EHR grants them anyway",
                    " ".join(never),
                    reg.issuer,
                )
        # Every client credential and published key is loaded now: a bad key file, a
        # private key published or two keys under one id stop the hub at start-up.
        self.readiness = Readiness(
            policy.issuers,
            discover=lambda iss: self.ehr.discovery.get(iss),
            audit_log=lambda: self.trail.audit_log,
        )
        self.ehr = EHRConnections(
            policy,
            timeout=self.http_timeout,
            cache_ttl=self.discovery_ttl,
            on_discovery=self.readiness.observe,
            ssl_context=self._ehr_ssl_context(),
        )
        self._public_jwks = self._build_public_jwks()
        self.pending = PendingLogins(
            ttl=self.login_timeout,
            max_entries=self.max_pending_logins,
            max_per_client=self.max_pending_logins_per_client,
        )
        budget = AuditBudget(
            window=self.unauthenticated_audit_window,
            per_source=self.unauthenticated_audit_records,
            total=10 * self.unauthenticated_audit_records,
        )
        self.trail = HubTrail(self._open_audit_log, self.log, budget)
        self.database_health = DatabaseHealth(self.trail, self.log)
        #: The token API's lookup of API tokens (:mod:`.token_lookup`).
        self.token_lookup = APITokenLookup()
        watch_audit(self.trail)
        self.inactivity = (
            InactivityLogoff(self, self.inactivity_timeout, self.log)
            if self.inactivity_timeout
            else None
        )
        self.refresher = TokenRefresher(
            self.ehr,
            self.trail,
            leeway=self.refresh_leeway,
            forced_interval=self.forced_refresh_interval,
            log=self.log,
            seal=RefreshTokenSeal(CryptKeeper.instance().keys) if self.enable_auth_state else None,
            backoff=self._refresh_backoff(),
            refresh_timeout=self.token_timeout,
            wait=self.refresh_wait,
            spill=self._token_spill(),
            shutdown_grace=self.shutdown_grace,
        )
        if self.fhir_access == "proxy" and hasattr(self.parent, "services"):
            register_proxy_service(self, self.parent)  # before JupyterHub reads its services

    def _ehr_ssl_context(self) -> ssl.SSLContext | None:
        """The trust of ``ehr_ca_bundle`` (None: the default); ValueError names a bad file."""
        if not self.ehr_ca_bundle:
            return None
        try:
            return ca_bundle_context(self.ehr_ca_bundle)
        except ValueError as exc:
            raise ValueError(
                f"SMARTAuthenticator.ehr_ca_bundle: {exc}. It must name a PEM file of the CA "
                "certificates that sign the EHRs' TLS certificates."
            ) from None

    def _token_spill(self) -> TokenSpill | None:
        """Where unsaved refreshed tokens survive a killed hub (:mod:`.spill`)."""
        if not self.enable_auth_state or not self.unsaved_tokens_dir:
            return None
        directory = Path(self.unsaved_tokens_dir).absolute()
        return TokenSpill(directory, CryptKeeper.instance().keys, self.log)

    def _refresh_backoff(self) -> RefreshBackoff:
        if self.refresh_backoff_max < self.refresh_backoff_initial:
            raise ValueError(
                "SMARTAuthenticator.refresh_backoff_max must be at least refresh_backoff_initial"
            )
        return RefreshBackoff(self.refresh_backoff_initial, self.refresh_backoff_max)

    def _note_refused_setting(self, change: Mapping[str, Any]) -> None:
        name = change["name"]
        if REFUSED[name].refused(change["new"]):
            self._refused_settings.append(name)

    @staticmethod
    def _check_crypt_key() -> None:
        """Refuse to start without JUPYTERHUB_CRYPT_KEY: tokens must be stored encrypted."""
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

    def _build_public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """Signing keys in use first, then ``published_jwks``; ValueError names a bad one."""
        try:
            return jwk_set([*self.ehr.signing_keys(), *load_published_keys(self.published_jwks)])
        except ValueError as exc:
            raise ValueError(f"SMARTAuthenticator JWK Set: {exc}") from None

    def _open_audit_log(self) -> AuditLog:
        path = Path(self.audit_log_path).absolute()
        configs = [*self.audit_sinks, *self.audit_syslog_sinks()]
        sinks = build_sinks(configs, path.parent) if configs else []
        alerts = self.alert_sink()
        key_paths = [
            r.private_key_path for r in self.ehr.policy.registrations() if r.private_key_path
        ]
        audit_log = self.audit_keepers(path, key_paths).open(path, [*sinks, alerts])
        alerts.attach(audit_log)
        return audit_log

    def get_audit_log(self) -> AuditLog:
        """The hub's one AuditLog, opened on first use (POST /hub/api/smart/audit writes to it)."""
        return self.trail.audit_log

    def public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """The hub's JWK Set: keys signing now and keys published (never private parts)."""
        return {"keys": [dict(jwk) for jwk in self._public_jwks["keys"]]}

    def scope_for(self, reg: IssuerRegistration, *, ehr_launch: bool) -> tuple[str, ...]:
        """Scopes to request: the issuer's or the default; ``launch`` only for EHR launches."""
        scope = list(reg.scope or self.scope)
        if not ehr_launch:
            scope = [s for s in scope if s != "launch"]
        elif "launch" not in scope:
            scope.append("launch")
        return tuple(dict.fromkeys(scope))

    # ------------------------------------------------------------------ JupyterHub hooks

    def get_handlers(self, app: Any) -> list[tuple[str, type]]:
        """OAuthenticator's login/callback/logout, the token API, the JWK Set, audit reports.

        Also where the SMART scopes join the ``user`` and ``server`` roles: JupyterHub
        calls this after loading roles and before spawning any server.
        """
        allow_framing(app.tornado_settings, self.frame_ancestors)
        register_smart_scopes(app)
        if self.inactivity is not None:
            self._check_activity_resolution(app)
            self.inactivity.start(app)
        # Before any request: tokens a killed hub could not store are newer than the database's.
        self.refresher.unsaved.restore(lambda name: _find_user(app, name))
        # JupyterHub has loaded its users (and applied blocked_users) before this call.
        self._start_up_withdrawal = asyncio.get_running_loop().create_task(
            withdraw_at_start_up(self, app)
        )
        return [
            *super().get_handlers(app),
            (r"/api/smart/token", SMARTTokenAPIHandler),
            (r"/smart/jwks\.json", SMARTJWKSHandler),
            *audit_handlers,
            *proxy_records_handlers,
            *audit_page_handlers,
            *health_handlers,
        ]

    def _check_activity_resolution(self, app: Any) -> None:
        """Warn when JupyterHub records activity too coarsely for the timeout."""
        resolution = float(getattr(app, "activity_resolution", 0) or 0)
        if self.inactivity_timeout < 2 * resolution:
            self.log.warning(
                "SMARTAuthenticator.inactivity_timeout (%.0f s) is under twice "
                "JupyterHub.activity_resolution (%.0f s): active users may be logged off",
                self.inactivity_timeout,
                resolution,
            )

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
        reg = self.ehr.registration(pending.issuer)
        token = await exchange_code(
            self.ehr.http,
            config,
            self.ehr.clients[reg.issuer],
            code=data["code"],
            redirect_uri=self.get_callback_url(handler),
            code_verifier=pending.code_verifier,
            requested_scope=pending.scope,
            timeout=self.token_timeout,
        )
        claims: dict[str, Any] = {}
        if "openid" in pending.scope:
            claims = await verify_id_token(
                token.id_token or "",
                config=config,
                client_id=reg.client_id,
                jwks=self.ehr.jwks,
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
        auth_state = new_auth_state(reg.issuer, config, token, context, fhir_user, sub)
        if self.modify_auth_state_hook is not None:
            auth_state = await self._call_modify_auth_state_hook(auth_state)
        if self.refresher.seal is not None and isinstance(auth_state, Mapping):
            auth_state = self.refresher.seal.seal(auth_state)  # the refresh token never leaves
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
        client = client_fields(getattr(handler, "request", None))
        if model is None:
            await self.trail.event(
                "login-failed",
                outcome="failure",
                description="refused by the hub's user policy (allowed/blocked users)",
                issuer=issuer,
                **client,
            )
            return None
        state = model.get("auth_state") or {}
        access_token = state.get("access_token")
        await self.trail.event(
            "login-succeeded",
            # the salted hash ties this sign-in to the token's later use (BALP OAuth pattern)
            token_hash=(
                self.trail.token_hash(access_token)
                if isinstance(access_token, str) and access_token
                else None
            ),
            username=model["name"],
            fhir_user=state.get("fhirUser"),
            issuer=issuer,
            patient=reference("Patient", state.get("patient")),
            encounter=reference("Encounter", state.get("encounter")),
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
        allowed = super().check_blocked_users(username, authentication)
        if isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            return False
        state = (authentication or {}).get("auth_state") if authentication else None
        if isinstance(state, Mapping) and not self.ehr.configured(state.get("iss")):
            self.log.warning("Refusing %s: issuer is not (or no longer) configured", username)
            return False
        return True

    async def access_withdrawn(self, user: Any) -> str | None:
        """Why ``user`` may no longer get EHR access through API tokens, or None.

        JupyterHub applies ``blocked_users`` and the allow rules at sign-in; a
        token issued earlier keeps authenticating. The token API and the audit
        endpoint ask here on every call, so a change of policy ends access at once.
        """
        unblocked = super().check_blocked_users(user.name, None)
        if isawaitable(unblocked):
            unblocked = await unblocked
        if not unblocked:
            return "blocked on this hub (blocked_users)"
        model = {
            "name": user.name,
            "admin": user.admin,
            "auth_state": await self.refresher.auth_states.get(user) or {},
            "groups": [group.name for group in getattr(user, "groups", [])],
        }
        allowed = self.check_allowed(user.name, model)
        if isawaitable(allowed):
            allowed = await allowed
        return None if allowed else "no longer allowed on this hub (allowed_users, allow rules)"

    async def withdraw_access(self, user: Any, reason: str) -> bool:
        """Revoke the user's EHR grant, drop the stored tokens and record why (once).

        False when the user held no tokens (nothing to withdraw, nothing recorded).
        """
        state = await self.refresher.load(user)
        if state is None or not holds_tokens(state):
            return False
        grant = await self.refresher.end_grant(user, revoke=True)
        self.log.warning("EHR access of %s withdrawn: %s", user.name, reason)
        await self.trail.event(
            "access-withdrawn",
            outcome="failure",
            description=f"{reason}; {grant}",
            username=user.name,
            fhir_user=state.get("fhirUser"),
            issuer=state.get("iss"),
        )
        return True

    async def delete_user(self, user: Any) -> None:
        """JupyterHub deletes the user: their EHR grant is revoked and recorded first."""
        super().delete_user(user)
        await self.withdraw_access(user, "the user was deleted from the hub")

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        """``refresh_user_hook`` first (as OAuthenticator documents), then expiry-based refresh.

        A hook that returns something other than None decides; else True:
        nothing to do (or the EHR is unreachable: keep the state and retry
        later); a dict: the refreshed auth_state; False: the user must sign in
        again. No userinfo probe (see :class:`.refresh.TokenRefresher`).
        """
        if self.refresh_user_hook is not None:
            decided = await self._call_refresh_user_hook(user, await user.get_auth_state())
            if decided is not None:
                return decided
        return await self.refresher.refresh_user(user)

    async def pre_spawn_start(self, user: Any, spawner: Any) -> None:
        """Tell the single-user server where the token API (or the FHIR proxy) is; never a token."""
        started = super().pre_spawn_start(user, spawner)
        if isawaitable(started):
            await started
        if self.fhir_access == "proxy":
            spawner.environment.update(proxy_environment(self))
            return
        spawner.environment["SMART_TOKEN_API_URL"] = url_path_join(
            spawner.hub.api_url, "smart/token"
        )


def _find_user(app: Any, name: str) -> Any:
    """JupyterHub's User called ``name``, or None when the hub has none."""
    orm_user = orm.User.find(app.db, name)
    return app.users[orm_user] if orm_user is not None else None
