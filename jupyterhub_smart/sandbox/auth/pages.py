"""The authorization server's HTTP endpoints under ``/auth``.

Back channel (JSON): ``token``, ``introspect``, ``revoke``, ``jwks``. Front
channel (HTML): ``authorize`` and the interactive steps that follow it when not
auto-approving: sign-in, patient picker, consent. Errors before the redirect
URI is known to be registered are shown as a page, never redirected (RFC 6749
§4.1.2.1); later ones go back to the client with ``error`` and ``state``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import AccessDeniedError, InvalidRequestError, OAuth2Error
from authlib.oidc.core.errors import ConsentRequiredError
from flask import Blueprint, Response, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from .context import EHR_LAUNCH, STANDALONE_LAUNCH, GrantContext
from .csrf import check_csrf
from .pending import PendingAuthorization
from .people import (
    PeopleStore,
    default_practitioner,
    describe_scope,
    display_name,
    parse_user_reference,
    patient_from_hint,
    user_exists,
)
from .server import SandboxAuth, StoredAuthorizationRequest

log = logging.getLogger(__name__)

SESSION_USER = "user"
SESSION_PENDING = "pending"
MAX_PENDING_PER_SESSION = 20
API_ENDPOINTS = ("token", "introspect", "revoke")


def create_auth_blueprint(auth: SandboxAuth, store: PeopleStore) -> Blueprint:
    """Blueprint with every ``/auth`` route, bound to one :class:`SandboxAuth`."""
    bp = Blueprint("auth", __name__, url_prefix="/auth")
    settings = auth.settings
    server = auth.server
    authorize_url = f"{settings.auth_base_url}/authorize"

    # -- helpers -----------------------------------------------------------------
    def error_page(status: int, title: str, message: str) -> tuple[str, int]:
        return render_template("error.html", title=title, message=message), status

    def oauth_error_response(error: OAuth2Error) -> Any:
        """Redirect with ``error`` when the redirect URI is trusted, else an HTML page."""
        if error.redirect_uri:
            status, _, headers = error()
            response = Response("", status=status, headers=headers)
            # RFC 9207: error responses name the issuer too (mix-up defence).
            response.location = add_params_to_uri(response.location, {"iss": settings.issuer})
            log.info("authorize refused with redirect: %s", error.error)
            return response
        description = error.get_error_description() or error.error
        log.info("authorize refused without redirect: %s", error.error)
        return error_page(400, f"Authorization request refused ({error.error})", description)

    def unspeakable_parameter_page() -> tuple[str, int]:
        """Authlib refuses to quote some characters in an error: answer for it, never a 500."""
        log.info("authorize refused: a parameter holds characters an OAuth error cannot quote")
        return error_page(
            400,
            "Authorization request refused (invalid_request)",
            "A parameter holds characters that are not allowed here (double quotes, backslashes "
            "or non-ASCII characters); check response_type, client_id and redirect_uri.",
        )

    def redirect_error(pending: PendingAuthorization, error: OAuth2Error) -> Any:
        error.redirect_uri = pending.redirect_uri
        error.state = pending.params.get("state")
        return oauth_error_response(error)

    def pending_from_request() -> PendingAuthorization | None:
        item_id = request.values.get("req", "")
        if item_id not in session.get(SESSION_PENDING, []):
            return None
        return auth.pending.get(item_id)

    def missing_pending() -> tuple[str, int]:
        return error_page(
            400,
            "Authorization request not found",
            "This authorization request is unknown, expired or belongs to another browser. "
            "Start again from the app.",
        )

    def launched_by(pending: PendingAuthorization) -> str | None:
        """The practitioner an EHR launch names, if any: a hint, never a sign-in."""
        if pending.launch is None or not pending.launch.practitioner:
            return None
        return f"Practitioner/{pending.launch.practitioner}"

    def current_user(pending: PendingAuthorization) -> str | None:
        """Who approves: the browser's own sign-in, never a name taken from a link.

        ``/ehr/launch?practitioner=X`` is an unauthenticated GET anyone can
        craft, so it signs nobody in. A browser signed in as someone other
        than the launch's practitioner is asked to sign in again.
        """
        if pending.user:
            return pending.user
        if pending.force_login:  # prompt=login: sign in again even with a session
            return None
        user = session.get(SESSION_USER)
        if not (isinstance(user, str) and user_exists(store, user)):
            return None
        hinted = launched_by(pending)
        return None if hinted is not None and user != hinted else user

    def user_display(reference: str) -> str:
        parsed = parse_user_reference(reference)
        resource = store.read(*parsed) if parsed else None
        return display_name(resource) if resource else reference

    def needs_patient(pending: PendingAuthorization) -> bool:
        if pending.launch is not None:
            return False
        return "launch/patient" in pending.grantable or any(
            s.startswith("patient/") for s in pending.grantable
        )

    def granted_scopes(pending: PendingAuthorization, user: str, chosen: list[str]) -> list[str]:
        """Drop context scopes that no context backs, and ``user/`` scopes of patient users."""
        ehr = pending.launch is not None
        patient = pending.patient or (pending.launch.patient if pending.launch else None)
        encounter = pending.launch.encounter if pending.launch else None
        result = []
        for scope in chosen:
            if scope == "launch" and not ehr:
                continue
            if scope == "launch/patient" and not patient:
                continue
            if scope == "launch/encounter" and not encounter:
                continue
            if scope.startswith("user/") and user.startswith("Patient/"):
                continue
            result.append(scope)
        return result

    def finish(pending: PendingAuthorization, user: str, chosen: list[str]) -> Any:
        """Issue the code (or ``access_denied`` when nothing was approved)."""
        auth.pending.pop(pending.id)
        _forget_pending(pending.id)
        request_obj = StoredAuthorizationRequest(authorize_url, pending.params)
        scopes = granted_scopes(pending, user, chosen)
        if not scopes:
            return redirect_error(pending, AccessDeniedError("No scope was approved."))
        launch = pending.launch
        if user.startswith("Patient/") and pending.patient not in (None, user.split("/", 1)[1]):
            # Defence in depth: a patient user never gets another patient's context.
            return redirect_error(
                pending, AccessDeniedError("A patient may only share their own record.")
            )
        approval = GrantContext(
            sub=user,
            fhir_user=user,
            scope=" ".join(scopes),
            patient=launch.patient if launch else pending.patient,
            encounter=launch.encounter if launch else None,
            fhir_context=launch.fhir_context if launch else (),
            need_patient_banner=launch is None,
            auth_time=int(time.time()),
            launch=EHR_LAUNCH if launch else STANDALONE_LAUNCH,
        )
        try:
            grant = server.get_consent_grant(request=request_obj, end_user=approval)
        except OAuth2Error as error:
            return redirect_error(pending, error)
        log.info(
            "authorization approved: client_id=%s user=%s patient=%s scopes=%d",
            pending.client_id,
            user,
            approval.patient,
            len(scopes),
        )
        return server.create_authorization_response(
            request=request_obj, grant_user=approval, grant=grant
        )

    def advance(pending: PendingAuthorization) -> Any:
        """Next step of an authorization: sign-in, patient picker, consent, or done."""
        user = current_user(pending)
        if user is None and settings.auto_approve:
            user = default_practitioner(store)
        if user is None:
            return redirect(url_for("auth.login", req=pending.id))
        if needs_patient(pending) and pending.patient is None:
            if user.startswith("Patient/"):
                pending.patient = user.split("/", 1)[1]
            elif settings.auto_approve:
                pending.patient = patient_from_hint(store, pending.params.get("login_hint"))
                if pending.patient is None:
                    first = store.list_patients(limit=1)
                    pending.patient = first[0]["id"] if first else None
            else:
                return redirect(url_for("auth.select_patient", req=pending.id))
        if settings.auto_approve:
            return finish(pending, user, pending.grantable)
        return redirect(url_for("auth.consent", req=pending.id))

    def _forget_pending(item_id: str) -> None:
        ids = session.get(SESSION_PENDING, [])
        if item_id in ids:
            session[SESSION_PENDING] = [i for i in ids if i != item_id]

    # -- API request hygiene -------------------------------------------------------
    @bp.before_request
    def check_api_request() -> Any:
        endpoint = (request.endpoint or "").removeprefix("auth.")
        if endpoint not in API_ENDPOINTS:
            return None
        if request.args:
            return _json_error(
                "invalid_request", "Send parameters in the form-encoded body, not in the URL.", 400
            )
        mimetype = request.mimetype
        if mimetype != "application/x-www-form-urlencoded":
            return _json_error(
                "invalid_request",
                "The body must be application/x-www-form-urlencoded "
                f"(got {mimetype or 'no content type'}).",
                400,
            )
        duplicated = sorted(k for k in request.form if len(request.form.getlist(k)) > 1)
        if duplicated:
            return _json_error(
                "invalid_request", f"Parameters given more than once: {', '.join(duplicated)}.", 400
            )
        return None

    @bp.after_request
    def allow_browser_apps(response: Response) -> Response:
        """Browser-based SMART apps (public clients) read token responses cross-origin.

        ``*`` without credentials: no cookie is ever involved at these endpoints.
        """
        endpoint = (request.endpoint or "").removeprefix("auth.")
        if endpoint in API_ENDPOINTS:
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    # -- back channel ----------------------------------------------------------------
    def guarded(respond: Any) -> Any:
        """Run an Authlib endpoint; a value its errors cannot quote is a 400, never a 500."""
        try:
            return respond()
        except ValueError:
            log.info(
                "%s refused: a parameter holds characters an OAuth error cannot quote", request.path
            )
            return _json_error(
                "invalid_request",
                "A parameter holds characters that are not allowed (double quotes, backslashes or non-ASCII).",
                400,
            )

    @bp.post("/token")
    def token() -> Any:
        response = guarded(server.create_token_response)
        delay = auth.options.token_answer_delay
        minted = request.form.get("grant_type") in ("authorization_code", "refresh_token")
        if delay and minted and getattr(response, "status_code", None) == 200:
            time.sleep(delay)  # test-only: the code or refresh token is spent, the answer late
        return response

    @bp.post("/introspect")
    def introspect() -> Any:
        return guarded(lambda: server.create_endpoint_response("introspection"))

    @bp.post("/revoke")
    def revoke() -> Any:
        return guarded(lambda: server.create_endpoint_response("revocation"))

    @bp.get("/jwks")
    def jwks() -> Any:
        response = jsonify(auth.signing_key.jwks())
        response.headers["Cache-Control"] = "public, max-age=300"
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    # -- front channel -------------------------------------------------------------
    @bp.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        signed_in = session.get(SESSION_USER)
        if not (isinstance(signed_in, str) and user_exists(store, signed_in)):
            signed_in = None
        # Authlib answers prompt=none with login_required when nobody is signed in.
        end_user = signed_in or ("auto-approve" if settings.auto_approve else None)
        try:
            grant = server.get_consent_grant(end_user=end_user)
        except OAuth2Error as error:
            return oauth_error_response(error)
        except ValueError:
            return unspeakable_parameter_page()
        client = grant.request.client
        params = {key: request.values[key] for key in request.values}
        prompts = params.get("prompt", "").split()
        if "none" in prompts and not settings.auto_approve:
            # Consent is always asked interactively here, so it cannot be silent.
            return oauth_error_response(
                ConsentRequiredError(redirect_uri=grant.redirect_uri, state=params.get("state"))
            )
        launch_context = None
        if params.get("launch"):
            launch_context = auth.storage.consume_launch(params["launch"], client.client_id)
            if launch_context is None:
                return oauth_error_response(
                    InvalidRequestError(
                        "The 'launch' value was used or expired meanwhile; launch again.",
                        redirect_uri=grant.redirect_uri,
                        state=params.get("state"),
                    )
                )
        pending = PendingAuthorization(
            id=auth.pending.new_id(),
            params=params,
            client_id=client.client_id,
            redirect_uri=grant.redirect_uri,
            grantable=grant.request.scope.split(),
            launch=launch_context,
            created=time.time(),
        )
        if launch_context and launch_context.practitioner and settings.auto_approve:
            # auto-approval signs in without pages by design; it approves as the
            # launch's practitioner instead of the first one
            pending.user = f"Practitioner/{launch_context.practitioner}"
        pending.force_login = "login" in prompts and not settings.auto_approve
        auth.pending.put(pending)
        if not settings.auto_approve:  # auto-approval finishes now: no cookie needed
            ids = [*session.get(SESSION_PENDING, []), pending.id][-MAX_PENDING_PER_SESSION:]
            session[SESSION_PENDING] = ids
        return advance(pending)

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        pending = pending_from_request()
        if pending is None:
            return missing_pending()
        if request.method == "POST":
            check_csrf()
            user = request.form.get("user", "")
            if parse_user_reference(user) is None or not user_exists(store, user):
                return error_page(400, "Unknown user", "Pick one of the listed users.")
            session[SESSION_USER] = user
            pending.user = user
            return advance(pending)
        practitioners = [
            {"ref": f"Practitioner/{p['id']}", "name": display_name(p)}
            for p in store.list_practitioners()
        ]
        patients = [
            {"ref": f"Patient/{p['id']}", "name": display_name(p)}
            for p in store.list_patients(limit=100)
        ]
        client = auth.registry.get(pending.client_id)
        return render_template(
            "login.html",
            req=pending.id,
            client_id=client.client_id if client else pending.client_id,
            practitioners=practitioners,
            patients=patients,
            selected=launched_by(pending) or (practitioners[0]["ref"] if practitioners else None),
        )

    @bp.route("/select-patient", methods=["GET", "POST"])
    def select_patient() -> Any:
        pending = pending_from_request()
        if pending is None:
            return missing_pending()
        user = current_user(pending)
        if user is None:
            return redirect(url_for("auth.login", req=pending.id))
        if user.startswith("Patient/") or pending.launch is not None:
            # A patient user's context is themself; an EHR launch's is the launched patient.
            return error_page(
                403, "No patient choice here", "This request's patient is already set."
            )
        if request.method == "POST":
            check_csrf()
            patient_id = request.form.get("patient", "")
            if not patient_id or len(patient_id) > 64 or store.read("Patient", patient_id) is None:
                return error_page(400, "Unknown patient", "Pick one of the listed patients.")
            pending.patient = patient_id
            return advance(pending)
        patients = store.list_patients(limit=100)
        return render_template(
            "select_patient.html",
            req=pending.id,
            client_id=pending.client_id,
            patients=[
                {"id": p["id"], "name": display_name(p), "birthDate": p.get("birthDate", "")}
                for p in patients
            ],
        )

    @bp.route("/consent", methods=["GET", "POST"])
    def consent() -> Any:
        pending = pending_from_request()
        if pending is None:
            return missing_pending()
        user = current_user(pending)
        if user is None:
            return redirect(url_for("auth.login", req=pending.id))
        if needs_patient(pending) and pending.patient is None:
            return advance(pending)  # no skipping the patient picker
        if request.method == "POST":
            check_csrf()
            if request.form.get("decision") != "approve":
                auth.pending.pop(pending.id)
                _forget_pending(pending.id)
                log.info("authorization denied by the user: client_id=%s", pending.client_id)
                return redirect_error(pending, AccessDeniedError("The user denied the request."))
            chosen = [s for s in request.form.getlist("scope") if s in pending.grantable]
            return finish(pending, user, chosen)
        patient = pending.patient or (pending.launch.patient if pending.launch else None)
        patient_resource = store.read("Patient", patient) if patient else None
        return render_template(
            "consent.html",
            req=pending.id,
            client_id=pending.client_id,
            user=user,
            patient=display_name(patient_resource) if patient_resource else None,
            scopes=[
                {"scope": scope, "text": describe_scope(scope)}
                for scope in granted_scopes(pending, user, pending.grantable)
            ],
            user_name=user_display(user),
        )

    @bp.post("/logout")
    def logout() -> Any:
        """Forget the browser's sign-in (the next authorization asks again)."""
        check_csrf()
        session.pop(SESSION_USER, None)
        return redirect("/ehr", 303)

    @bp.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        endpoint = (request.endpoint or "").removeprefix("auth.")
        status = error.code or 500
        if endpoint in API_ENDPOINTS or request.path.rstrip("/").split("/")[-1] in API_ENDPOINTS:
            description = error.description or error.name
            if status == 413:
                description = (
                    f"The request body is larger than {auth.options.max_form_bytes} bytes."
                )
            return _json_error("invalid_request", str(description), status)
        return error_page(status, error.name, str(error.description or error.name))

    return bp


def _json_error(error: str, description: str, status: int) -> Response:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response
