"""The sandbox EHR's Flask application: FHIR server, authorization server, EHR simulator.

The three parts meet only here. The FHIR blueprint receives the token lookup
(``GrantLookup``) and never touches the authorization server's tables; the
authorization server and the EHR simulator read people from the FHIR store.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .auth.clients import ClientRegistry
from .auth.csrf import csrf_token
from .auth.discovery import smart_configuration
from .auth.options import AuthOptions
from .auth.pages import create_auth_blueprint
from .auth.server import SandboxAuth, build_auth
from .ehr import create_ehr_blueprint
from .fhir.bulk_options import BulkOptions
from .settings import SandboxSettings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: Largest body accepted anywhere (FHIR AuditEvent creates are a few KiB).
MAX_BODY_BYTES = 1024 * 1024
SESSION_COOKIE = "smart_sandbox_session"


def create_app(
    settings: SandboxSettings,
    store: Any,
    *,
    auth: SandboxAuth | None = None,
    registry: ClientRegistry | None = None,
    options: AuthOptions | None = None,
    bulk: BulkOptions | None = None,
) -> Flask:
    """Build the WSGI app. ``store`` is the FHIR engineer's ``FHIRStore``."""
    from .fhir import create_fhir_blueprint
    from .fhir.bulk import create_bulk_blueprint

    if auth is None:
        registry = registry or ClientRegistry.from_file(settings.clients_file)
        auth = build_auth(settings, registry, options)
    app = Flask(__name__, template_folder=str(TEMPLATES), static_folder=None)
    app.secret_key = secrets.token_bytes(32)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.origin.startswith("https://"),
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.extensions["smart_sandbox_auth"] = auth

    @app.before_request
    def cap_form_bodies() -> None:
        """Authorization and EHR endpoints take small forms only (64 KiB by default)."""
        if request.path.startswith(("/auth/", "/ehr")):
            request.max_content_length = auth.options.max_form_bytes
            request.max_form_memory_size = auth.options.max_form_bytes

    @app.after_request
    def page_security_headers(response: Any) -> Any:
        """HTML pages: no framing (consent clickjacking), no referrer, no external assets."""
        if response.mimetype == "text/html":
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
            )
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            if request.path.startswith("/auth/"):
                response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/fhir/.well-known/smart-configuration")
    def smart_config() -> Any:
        response = jsonify(smart_configuration(settings))
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    @app.get("/")
    def home() -> Any:
        return render_template("home.html", iss=settings.fhir_base_url, origin=settings.origin)

    app.register_blueprint(create_auth_blueprint(auth, store))
    app.register_blueprint(create_ehr_blueprint(auth, store))
    app.register_blueprint(
        create_bulk_blueprint(store, auth.lookup, settings, bulk or BulkOptions())
    )
    app.register_blueprint(create_fhir_blueprint(store, auth.lookup, settings))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        description = str(error.description or error.name)
        if request.path.startswith("/fhir"):
            response = jsonify(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": _fhir_issue_code(status),
                            "diagnostics": description,
                        }
                    ],
                }
            )
            response.status_code = status
            response.mimetype = "application/fhir+json"
            return response
        if request.path.startswith("/auth/") and request.method == "POST":
            response = jsonify({"error": "invalid_request", "error_description": description})
            response.status_code = status
            return response
        return render_template("error.html", title=error.name, message=description), status

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            return http_error(error)
        # The type only: messages of some exceptions could quote request data.
        log.error("internal error on %s %s: %s", request.method, request.path, type(error).__name__)
        if request.path.startswith("/fhir"):
            response = jsonify(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "fatal",
                            "code": "exception",
                            "diagnostics": "Internal error; see the sandbox log.",
                        }
                    ],
                }
            )
            response.mimetype = "application/fhir+json"
        else:
            response = jsonify(
                {
                    "error": "server_error",
                    "error_description": "Internal error; see the sandbox log.",
                }
            )
        response.status_code = 500
        return response

    return app


def _fhir_issue_code(status: int) -> str:
    return {
        401: "login",
        403: "forbidden",
        404: "not-found",
        405: "not-supported",
        413: "too-long",
    }.get(status, "invalid" if status < 500 else "exception")
