"""Sign-in, patient picker and consent pages, on a sandbox without --auto-approve."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandbox_process import SandboxProcess, run_sandbox

from .flow import (
    REDIRECT_URI,
    Authorization,
    authorize,
    ehr_launch,
    exchange,
    patient_ids,
    query_of,
)

CLIENTS = [{"client_id": "app-public", "type": "public", "redirect_uris": [REDIRECT_URI]}]
SCOPE = "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs user/*.rs offline_access"


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    workdir: Path = tmp_path_factory.mktemp("sandbox-manual")
    with run_sandbox(workdir, CLIENTS, auto_approve=False) as process:
        yield process


@pytest.fixture
def browser(manual: SandboxProcess) -> Iterator[httpx.Client]:
    """A user agent with its own cookie jar."""
    with httpx.Client(base_url=manual.origin, follow_redirects=False, timeout=30) as http:
        yield http


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


def req_of(location: str) -> str:
    return query_of(location)["req"]


def sign_in(browser: httpx.Client, auth: Authorization, user: str | None = None) -> httpx.Response:
    """From the authorize response through the sign-in page; returns the next redirect."""
    assert auth.response.status_code == 302
    login_url = auth.location
    assert "/auth/login" in login_url
    page = browser.get(login_url)
    assert page.status_code == 200
    users = re.findall(r'name="user" value="([^"]+)"', page.text)
    assert any(u.startswith("Practitioner/") for u in users)
    assert any(u.startswith("Patient/") for u in users)
    chosen = user or next(u for u in users if u.startswith("Practitioner/"))
    return browser.post(
        "/auth/login",
        data={"csrf_token": csrf_of(page.text), "req": req_of(login_url), "user": chosen},
    )


def test_sign_in_pick_patient_and_untick_a_scope(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    auth = authorize(browser, manual.iss, "app-public", SCOPE)
    to_picker = sign_in(browser, auth)
    assert to_picker.status_code == 302
    assert "/auth/select-patient" in to_picker.headers["location"]
    picker = browser.get(to_picker.headers["location"])
    patients = re.findall(r'name="patient" value="([^"]+)"', picker.text)
    chosen_patient = patients[1]
    to_consent = browser.post(
        "/auth/select-patient",
        data={
            "csrf_token": csrf_of(picker.text),
            "req": req_of(to_picker.headers["location"]),
            "patient": chosen_patient,
        },
    )
    assert "/auth/consent" in to_consent.headers["location"]
    consent = browser.get(to_consent.headers["location"])
    offered = re.findall(r'name="scope" value="([^"]+)"', consent.text)
    assert "patient/Observation.rs" in offered
    kept = [s for s in offered if s != "patient/Observation.rs"]
    done = browser.post(
        "/auth/consent",
        data={
            "csrf_token": csrf_of(consent.text),
            "req": req_of(to_consent.headers["location"]),
            "decision": "approve",
            "scope": kept,
        },
    )
    assert done.status_code == 302
    assert done.headers["location"].startswith(REDIRECT_URI)
    auth.response = done
    assert auth.result["state"] == auth.state
    body = exchange(browser, auth, "app-public").json()
    granted = body["scope"].split()
    assert "patient/Observation.rs" not in granted
    assert "patient/Patient.rs" in granted
    assert len(granted) < len(SCOPE.split())
    assert body["patient"] == chosen_patient
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert browser.get(f"/fhir/Patient/{chosen_patient}", headers=headers).status_code == 200


def test_consent_without_csrf_token_is_refused(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    auth = authorize(browser, manual.iss, "app-public", "launch/patient patient/Patient.rs")
    to_picker = sign_in(browser, auth)
    picker = browser.get(to_picker.headers["location"])
    patient = re.findall(r'name="patient" value="([^"]+)"', picker.text)[0]
    to_consent = browser.post(
        "/auth/select-patient",
        data={
            "csrf_token": csrf_of(picker.text),
            "req": req_of(to_picker.headers["location"]),
            "patient": patient,
        },
    )
    req = req_of(to_consent.headers["location"])
    forged = browser.post(
        "/auth/consent", data={"req": req, "decision": "approve", "scope": "patient/Patient.rs"}
    )
    assert forged.status_code == 400
    assert "CSRF" in forged.text
    wrong = browser.post(
        "/auth/consent",
        data={
            "req": req,
            "decision": "approve",
            "scope": "patient/Patient.rs",
            "csrf_token": "guess",
        },
    )
    assert wrong.status_code == 400
    assert "location" not in wrong.headers


def test_login_without_csrf_token_is_refused(browser: httpx.Client, manual: SandboxProcess) -> None:
    auth = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    response = browser.post(
        "/auth/login", data={"req": req_of(auth.location), "user": "Practitioner/whoever"}
    )
    assert response.status_code == 400


def test_another_browser_cannot_continue_the_request(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    auth = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    with httpx.Client(base_url=manual.origin, follow_redirects=False) as stranger:
        page = stranger.get(auth.location)
        assert page.status_code == 400
        assert "Start again" in page.text


def test_deny_redirects_with_access_denied(browser: httpx.Client, manual: SandboxProcess) -> None:
    auth = authorize(browser, manual.iss, "app-public", "launch/patient patient/Patient.rs")
    to_picker = sign_in(browser, auth)
    picker = browser.get(to_picker.headers["location"])
    patient = re.findall(r'name="patient" value="([^"]+)"', picker.text)[0]
    to_consent = browser.post(
        "/auth/select-patient",
        data={
            "csrf_token": csrf_of(picker.text),
            "req": req_of(to_picker.headers["location"]),
            "patient": patient,
        },
    )
    consent = browser.get(to_consent.headers["location"])
    denied = browser.post(
        "/auth/consent",
        data={
            "csrf_token": csrf_of(consent.text),
            "req": req_of(to_consent.headers["location"]),
            "decision": "deny",
        },
    )
    auth.response = denied
    assert auth.result["error"] == "access_denied"
    assert auth.result["iss"] == f"{manual.origin}/auth"
    assert auth.result["state"] == auth.state


def test_patient_user_gets_own_context_and_no_user_scopes(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    auth = authorize(browser, manual.iss, "app-public", SCOPE)
    page = browser.get(auth.location)
    patient_user = re.findall(r'name="user" value="(Patient/[^"]+)"', page.text)[0]
    to_consent = browser.post(
        "/auth/login",
        data={"csrf_token": csrf_of(page.text), "req": req_of(auth.location), "user": patient_user},
    )
    assert "/auth/consent" in to_consent.headers["location"]  # no picker: the patient is the user
    consent = browser.get(to_consent.headers["location"])
    offered = re.findall(r'name="scope" value="([^"]+)"', consent.text)
    assert "user/*.rs" not in offered
    done = browser.post(
        "/auth/consent",
        data={
            "csrf_token": csrf_of(consent.text),
            "req": req_of(to_consent.headers["location"]),
            "decision": "approve",
            "scope": offered,
        },
    )
    auth.response = done
    body = exchange(browser, auth, "app-public").json()
    assert body["patient"] == patient_user.split("/", 1)[1]
    assert "user/*.rs" not in body["scope"].split()


def test_ehr_launch_naming_a_practitioner_signs_nobody_in(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    """``/ehr/launch?practitioner=X`` is a link anyone can craft: it pre-selects X, no more."""
    patient = patient_ids(browser)[0]
    page = browser.get("/ehr")
    options = re.findall(r'<option value="([^"]+)">', page.text)
    practitioners = [p for p in options if p.startswith("practitioner-")]
    target, other = practitioners[-1], practitioners[0]
    assert target != other

    def launch_for(practitioner: str) -> Authorization:
        location = ehr_launch(browser, REDIRECT_URI, patient, practitioner=practitioner)
        launch = query_of(location.headers["location"])["launch"]
        return authorize(
            browser, manual.iss, "app-public", "launch openid fhirUser patient/*.rs", launch=launch
        )

    auth = launch_for(target)
    assert "/auth/login" in auth.location  # the sign-in page, not X's consent
    login = browser.get(auth.location)
    assert re.search(rf'value="Practitioner/{target}" checked', login.text)  # only a hint
    consent = sign_in(browser, auth, f"Practitioner/{target}")
    assert "/auth/consent" in consent.headers["location"]
    assert f"Practitioner/{target}" in browser.get(consent.headers["location"]).text
    # Signed in as X, a launch naming X goes on; one naming someone else asks to sign in.
    assert "/auth/consent" in launch_for(target).location
    assert "/auth/login" in launch_for(other).location


def test_pages_cannot_be_framed_or_cached(browser: httpx.Client, manual: SandboxProcess) -> None:
    auth = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    page = browser.get(auth.location)
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers.get("set-cookie", "")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_prompt_none_and_prompt_login(browser: httpx.Client, manual: SandboxProcess) -> None:
    silent = authorize(
        browser,
        manual.iss,
        "app-public",
        "openid patient/Patient.rs launch/patient",
        extra={"prompt": "none"},
    )
    assert silent.result["error"] == "login_required"  # OpenID Connect prompt=none
    # sign in once; later requests of this browser skip the sign-in page...
    first = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    sign_in(browser, first)
    again = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    assert "/auth/select-patient" in again.location
    # ...but silent consent is never possible, and prompt=login asks again
    still_silent = authorize(
        browser, manual.iss, "app-public", "patient/Patient.rs", extra={"prompt": "none"}
    )
    assert still_silent.result["error"] == "consent_required"
    forced = authorize(
        browser,
        manual.iss,
        "app-public",
        "patient/Patient.rs launch/patient",
        extra={"prompt": "login"},
    )
    assert "/auth/login" in forced.location


def test_sign_out_forgets_the_user(browser: httpx.Client, manual: SandboxProcess) -> None:
    first = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    sign_in(browser, first)
    page = browser.get("/ehr")
    assert "Sign out" in page.text
    assert browser.post("/auth/logout", data={}).status_code == 400  # CSRF token required
    out = browser.post("/auth/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303
    again = authorize(browser, manual.iss, "app-public", "patient/Patient.rs launch/patient")
    assert "/auth/login" in again.location


def test_patient_user_cannot_pick_another_patient(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    auth = authorize(browser, manual.iss, "app-public", "launch/patient patient/*.rs")
    page = browser.get(auth.location)
    patient_users = re.findall(r'name="user" value="(Patient/[^"]+)"', page.text)
    me, other = patient_users[0], patient_users[1].split("/", 1)[1]
    to_consent = browser.post(
        "/auth/login",
        data={"csrf_token": csrf_of(page.text), "req": req_of(auth.location), "user": me},
    )
    req = req_of(to_consent.headers["location"])
    forced = browser.post(
        "/auth/select-patient",
        data={"csrf_token": csrf_of(page.text), "req": req, "patient": other},
    )
    assert forced.status_code == 403
    consent = browser.get(to_consent.headers["location"])
    done = browser.post(
        "/auth/consent",
        data={
            "csrf_token": csrf_of(consent.text),
            "req": req,
            "decision": "approve",
            "scope": ["launch/patient", "patient/*.rs"],
        },
    )
    auth.response = done
    assert exchange(browser, auth, "app-public").json()["patient"] == me.split("/", 1)[1]


def test_consent_cannot_skip_the_patient_picker(
    browser: httpx.Client, manual: SandboxProcess
) -> None:
    auth = authorize(browser, manual.iss, "app-public", "launch/patient patient/*.rs")
    to_picker = sign_in(browser, auth)
    req = req_of(to_picker.headers["location"])
    page = browser.get("/ehr")
    skipped = browser.post(
        "/auth/consent",
        data={
            "csrf_token": csrf_of(page.text),
            "req": req,
            "decision": "approve",
            "scope": "patient/*.rs",
        },
    )
    assert skipped.status_code == 302
    assert "/auth/select-patient" in skipped.headers["location"]
