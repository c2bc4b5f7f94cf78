"""The EHR simulator: a patient list with Launch buttons, and active-grant revocation.

``/ehr/launch?app=URL&patient=ID`` plays the EHR's part of a SMART EHR launch:
it records the context behind an opaque single-use ``launch`` value bound to
one client, then sends the browser to ``URL?iss={FHIR base}&launch=...``. The
app URL must share its origin with a registered redirect URI of that client,
so the simulator is never an open redirector.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import Blueprint, jsonify, redirect, render_template, request, url_for

from .auth.context import LaunchContext
from .auth.csrf import check_csrf
from .auth.people import PeopleStore, display_name, mrn
from .auth.server import SandboxAuth

log = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_OFFSET = 10_000_000
MAX_URL_LENGTH = 2000
#: Served at ``/ehr/smart-style.json`` (SMART App Launch "Styling").
SMART_STYLE = {
    "color_background": "#f6f8fa",
    "color_error": "#b42318",
    "color_highlight": "#1f5f99",
    "color_modal_backdrop": "",
    "color_success": "#067647",
    "color_text": "#1c232b",
    "dim_border_radius": "8px",
    "dim_font_size": "15px",
    "dim_spacing_size": "20px",
    "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "font_family_heading": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
}


class LaunchError(ValueError):
    """A launch request the simulator refuses; the message says what to fix."""


def create_ehr_blueprint(auth: SandboxAuth, store: PeopleStore) -> Blueprint:
    bp = Blueprint("ehr", __name__, url_prefix="/ehr")
    settings = auth.settings

    def error_page(status: int, title: str, message: str) -> tuple[str, int]:
        return render_template("error.html", title=title, message=message), status

    @bp.get("")
    @bp.get("/")
    def index() -> Any:
        try:
            offset = int(request.args.get("offset", "0"))
        except ValueError:
            offset = -1
        if not 0 <= offset <= MAX_OFFSET:
            return error_page(
                400, "Bad offset", f"'offset' must be a whole number from 0 to {MAX_OFFSET}."
            )
        patients = store.list_patients(limit=PAGE_SIZE + 1, offset=offset)
        practitioners = [
            {"id": p["id"], "name": display_name(p)} for p in store.list_practitioners()
        ]
        rows = [
            {
                "id": p["id"],
                "name": display_name(p),
                "birthDate": p.get("birthDate", ""),
                "gender": p.get("gender", ""),
                "mrn": mrn(p),
            }
            for p in patients[:PAGE_SIZE]
        ]
        return render_template(
            "ehr_index.html",
            patients=rows,
            practitioners=practitioners,
            clients=[c.client_id for c in auth.registry if c.redirect_uris],
            default_app=settings.default_app_launch_url,
            offset=offset,
            next_offset=offset + PAGE_SIZE if len(patients) > PAGE_SIZE else None,
            prev_offset=max(0, offset - PAGE_SIZE) if offset else None,
            iss=settings.fhir_base_url,
        )

    @bp.get("/launch")
    def launch() -> Any:
        try:
            app_url, context = _launch_request(auth, store)
        except LaunchError as exc:
            log.info("EHR launch refused: %s", exc)
            return error_page(400, "Cannot launch", str(exc))
        handle = auth.storage.create_launch(context, auth.options.launch_lifetime)
        log.info(
            "EHR launch created: client_id=%s patient=%s encounter=%s",
            ",".join(context.client_ids),
            context.patient,
            context.encounter,
        )
        return redirect(_add_query(app_url, {"iss": settings.fhir_base_url, "launch": handle}), 302)

    @bp.get("/sessions")
    def sessions() -> Any:
        grants = []
        for family in auth.storage.active_families():
            grant = family["grant"]
            grants.append(
                {
                    "family_id": family["family_id"],
                    "client_id": family["client_id"],
                    "scope": family["scope"],
                    "user": grant.fhir_user if grant else "(backend service)",
                    "grant_user": grant.fhir_user if grant else None,
                    "patient": grant.patient if grant else None,
                }
            )
        return render_template("ehr_sessions.html", grants=grants)

    @bp.post("/revoke")
    def revoke() -> Any:
        check_csrf()
        family_id = request.form.get("grant", "")
        user = request.form.get("user", "")
        if family_id and len(family_id) <= 64:
            families = [family_id]
        elif user and len(user) <= 200:
            # Withdraw a person's consent: every active grant they approved, for every app.
            families = [
                f["family_id"]
                for f in auth.storage.active_families()
                if f["grant"] is not None and f["grant"].fhir_user == user
            ]
        else:
            return error_page(
                400, "Nothing to revoke", "Pick a grant or a user on the sessions page."
            )
        count = sum(auth.storage.revoke_family(f) for f in families)
        log.info("revoked from the EHR: %d grant(s), %d token(s)", len(families), count)
        return redirect(url_for("ehr.sessions"), 303)

    @bp.get("/smart-style.json")
    def smart_style() -> Any:
        response = jsonify(SMART_STYLE)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    return bp


def _launch_request(auth: SandboxAuth, store: PeopleStore) -> tuple[str, LaunchContext]:
    """Validate ``/ehr/launch``'s query; return the app URL and the context to record."""
    args = request.args
    app_url = args.get("app") or auth.settings.default_app_launch_url
    try:
        parts = urlsplit(app_url)
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 literal
        raise LaunchError("'app' must be an absolute http(s) URL without fragment.") from None
    if (
        len(app_url) > MAX_URL_LENGTH
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.fragment
    ):
        raise LaunchError("'app' must be an absolute http(s) URL without fragment.")
    patient = args.get("patient", "")
    if not patient:
        raise LaunchError("'patient' is required: the id of the patient to launch for.")
    if len(patient) > 64 or store.read("Patient", patient) is None:
        raise LaunchError(f"No patient with id {patient!r}.")
    encounter = args.get("encounter") or None
    if encounter is not None:
        resource = store.read("Encounter", encounter) if len(encounter) <= 64 else None
        if resource is None:
            raise LaunchError(f"No encounter with id {encounter!r}.")
        subject = str((resource.get("subject") or {}).get("reference", ""))
        if subject.rsplit("/", 1)[-1] != patient:
            raise LaunchError(
                f"Encounter {encounter!r} is not an encounter of patient {patient!r}."
            )
    practitioner = args.get("practitioner") or None
    if practitioner is not None and (
        len(practitioner) > 64 or store.read("Practitioner", practitioner) is None
    ):
        raise LaunchError(f"No practitioner with id {practitioner!r}.")
    fhir_context = []
    for reference in args.getlist("context"):
        resource_type, _, resource_id = reference.partition("/")
        if not resource_type or not resource_id or store.read(resource_type, resource_id) is None:
            raise LaunchError(f"'context' {reference!r} is not a resource in this EHR.")
        fhir_context.append({"reference": reference})

    client_id = args.get("client_id") or None
    if client_id is not None:
        client = auth.registry.get(client_id)
        if client is None:
            raise LaunchError(f"No registered client {client_id!r}.")
        if _origin(app_url) not in client.redirect_origins:
            raise LaunchError(
                f"The app URL's origin is not among client {client_id!r}'s redirect URIs."
            )
        client_ids: tuple[str, ...] = (client_id,)
    else:
        candidates = auth.registry.for_app_url(app_url)
        if not candidates:
            raise LaunchError(
                "No registered client has a redirect URI on the app URL's origin; register one "
                "or pass 'client_id'."
            )
        # Clients sharing an origin are one deployment: any of them may use the launch.
        client_ids = tuple(sorted(c.client_id for c in candidates))
    return app_url, LaunchContext(
        client_ids=client_ids,
        patient=patient,
        encounter=encounter,
        practitioner=practitioner,
        fhir_context=tuple(fhir_context),
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _add_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
