"""From EHR to notebook in a real browser: the whole chain, driven the way a person does it.

``jupyterhub-smart demo`` runs as a subprocess (sandbox EHR with sign-in and
consent pages, JupyterHub with SMARTAuthenticator as a ``private_key_jwt``
client, JupyterLab single-user servers). Headless Chromium (Debian's
``chromium``, never a Playwright download) then:

1. opens the EHR's patient list and presses Launch for patient A;
2. signs in as a practitioner and approves on the sandbox's pages;
3. lands in JupyterLab on ``patient-vitals.ipynb``, runs all cells, and finds
   the plot and patient A's name in the outputs;
4. launches patient B from the EHR in another tab; the same kernel, in the
   same running server, now reads B's context from the hub's token API;
5. revokes the practitioner's grants on the EHR's sessions page; the very
   next FHIR read in the notebook (no waiting: the access token would be
   valid for the rest of the hour) ends in the client's clear
   re-authentication message (``ReauthenticationRequired``), not a stack of
   HTTP errors. The FHIR server refuses the revoked token (401); the client
   tells the hub's token API which token was refused (its SHA-256); the hub
   refreshes at once, the EHR answers ``invalid_grant``, and the hub answers
   ``reauthentication_required``.

A screenshot of each step goes to ``test-artifacts/e2e/`` (printed at the
start); set ``E2E_DOCS_SCREENSHOTS=1`` to refresh the copies in ``docs/img/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from demo.runner import DemoProcess, run_demo
from playwright import sync_api

from .lab import (
    CHROMIUM_FLAGS,
    SLOW_MS,
    chromium_or_skip,
    launch,
    patient_rows,
    run_all,
    run_new_cell,
    scroll_to_top,
    wait_for_notebook,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
DOCS_IMG = REPO_ROOT / "docs" / "img"
#: Screenshots worth showing in the docs (copied when E2E_DOCS_SCREENSHOTS=1).
DOCS_SHOTS = {
    "01-ehr-patients": "ehr-patients.png",
    "03-consent": "sandbox-consent.png",
    "05-vitals-plotted": "notebook-vitals.png",
    "07-context-patient-b": "notebook-new-launch.png",
    "09-reauthentication": "notebook-reauthentication.png",
}


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[DemoProcess]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    state = tmp_path_factory.mktemp("e2e") / "demo"
    with run_demo(state) as process:
        yield process


class Shots:
    """Numbered screenshots under test-artifacts/e2e/ (and docs/img/ on request)."""

    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.to_docs = os.environ.get("E2E_DOCS_SCREENSHOTS") == "1"
        print(f"\nend-to-end screenshots: {ARTIFACTS}")

    def take(self, page: Any, name: str) -> None:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path))
        if self.to_docs and name in DOCS_SHOTS:
            _save_small_png(path, DOCS_IMG / DOCS_SHOTS[name])


def _save_small_png(source: Path, target: Path) -> None:
    """A 256-colour copy for the docs (screenshots of pages quantize without visible loss)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(target, optimize=True)


def _sign_in_and_consent(
    page: Any, shots: Shots | None, hub_url: str, decision: str = "Approve"
) -> None:
    """Go through the sandbox's sign-in and consent pages until the browser is back at the hub."""
    expect = sync_api.expect
    if shots is not None:
        expect(page).to_have_title(re.compile("Sign in"))
        shots.take(page, "02-sign-in")
    for _step in range(6):
        if page.url.startswith(hub_url):
            return
        title = page.title()
        if title.startswith("Sign in"):
            page.get_by_role("radio").first.check()
            page.get_by_role("button", name="Sign in").click()
        elif title.startswith("Approve access"):
            if shots is not None:
                shots.take(page, "03-consent")
            page.get_by_role("button", name=decision).click()
        else:
            raise AssertionError(f"unexpected page {title!r}: {page.inner_text('body')[:1000]}")
        page.wait_for_load_state()
    raise AssertionError(f"the sandbox's pages did not lead back to the hub: {page.url}")


def test_declined_consent_is_a_clear_page(demo: DemoProcess, chromium_path: str) -> None:
    """Deny on the EHR's consent page: the hub says so in words (403), and offers to retry."""
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo.ehr_url)
            launch(page, patient_rows(page)[-1][1])
            with page.expect_response(lambda r: "/hub/oauth_callback" in r.url) as callback:
                _sign_in_and_consent(page, None, demo.hub_url, decision="Deny")
            assert callback.value.status == 403
            expect(page.get_by_text("You declined access in the EHR")).to_be_visible()
            expect(page.get_by_role("link", name="Sign in again")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "00-consent-declined.png"))
        finally:
            browser.close()
    assert not [p for p in demo.descendants() if "jupyterhub-singleuser" in " ".join(p.cmdline())]


def test_ehr_launch_to_notebook_new_patient_and_revocation(
    demo: DemoProcess, chromium_path: str
) -> None:
    expect = sync_api.expect
    shots = Shots()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        try:
            page = context.new_page()

            # 1. The EHR's patient list; Launch for patient A.
            page.goto(demo.ehr_url)
            expect(page.get_by_role("heading", name="Patients")).to_be_visible()
            patients = patient_rows(page)
            assert len(patients) == 5
            (name_a, id_a), (name_b, id_b) = patients[0], patients[1]
            shots.take(page, "01-ehr-patients")
            launch(page, id_a)

            # 2. Sign in as a practitioner and approve, on the sandbox's own pages.
            _sign_in_and_consent(page, shots, demo.hub_url)

            # 3. JupyterLab opens the demo notebook; run it all.
            wait_for_notebook(page)
            shots.take(page, "04-jupyterlab")
            run_all(page)
            plot = page.locator(".jp-OutputArea-output img").first
            expect(plot).to_be_visible(timeout=SLOW_MS)
            summary = page.locator(".jp-OutputArea-output", has_text="heart rate readings")
            expect(summary).to_be_visible(timeout=SLOW_MS)
            # (Run All stops at the first error: the last cell's summary means none failed.)
            scroll_to_top(page)
            first_output = page.locator(".jp-NotebookPanel:visible .jp-OutputArea").first
            expect(first_output).to_contain_text(f"Patient:     {id_a}")
            plot.scroll_into_view_if_needed()
            shots.take(page, "05-vitals-plotted")
            banner = run_new_cell(page, "fhir.patient_banner()")
            expect(banner.locator(".jp-OutputArea-output")).to_contain_text(name_a.split()[-1])
            shots.take(page, "06-patient-a-banner")

            # 4. A new EHR launch for patient B, in another tab, while the server keeps running.
            ehr = context.new_page()
            ehr.goto(demo.ehr_url)
            launch(ehr, id_b)
            _sign_in_and_consent(ehr, None, demo.hub_url)
            wait_for_notebook(ehr)
            ehr.close()
            page.bring_to_front()
            cell = run_new_cell(
                page,
                "now = connect()\n"
                'print("first launch:", context.patient, "| now:", now.context.patient)\n'
                "now.patient_banner()",
            )
            output = cell.locator(".jp-OutputArea")
            # The kernel kept patient A's context in its variables; the hub now serves B's.
            expect(output).to_contain_text(f"first launch: {id_a} | now: {id_b}")
            expect(output).to_contain_text(name_b.split()[-1])
            shots.take(page, "07-context-patient-b")

            # The tokens of this session, to look for in logs and databases at the end.
            secrets = _session_secrets(demo, id_b)

            # 5. The practitioner's consent is withdrawn in the EHR.
            sessions = context.new_page()
            sessions.goto(f"{demo.sandbox_url}/ehr/sessions")
            expect(sessions.get_by_role("heading", name="Active grants")).to_be_visible()
            revoke_all = sessions.get_by_role("button", name="Revoke all of this user's")
            expect(revoke_all.first).to_be_visible()
            shots.take(sessions, "08-ehr-sessions")
            revoke_all.first.click()
            expect(sessions.get_by_text("No active grants.")).to_be_visible()
            sessions.close()
            page.bring_to_front()
            # At once: the kernel's cached token is still unexpired, the FHIR server refuses it.
            # (`now`, the client of the latest launch: `fhir` still caches patient A's token,
            # whose report the hub answers with B's token, refused in turn, and the client
            # retries a 401 only once: FHIRError first, ReauthenticationRequired on the next.)
            cell = run_new_cell(page, 'now.observations(code="8867-4").to_pandas()')
            error = cell.locator(".jp-OutputArea")
            expect(error).to_contain_text("ReauthenticationRequired")
            expect(error).to_contain_text("Your EHR session has ended")
            # Where to sign in again: the hub's public address, not its internal API address.
            expect(error).to_contain_text(f"open {demo.hub_url}/hub/oauth_login in your browser")
            shots.take(page, "09-reauthentication")
        except Exception:
            for number, open_page in enumerate(context.pages):
                open_page.screenshot(path=str(ARTIFACTS / f"failure-{number}.png"))
            raise
        finally:
            context.close()
            browser.close()

    # Nothing secret in any log (demo, sandbox, hub, single-user server, audit trail), and no
    # token in plain text in the hub's database (auth_state is encrypted).
    logs = demo.logs() + (demo.state_dir / "hub" / "audit.jsonl").read_text()
    secrets["crypt key"] = (demo.state_dir / "crypt_key").read_text().strip()
    for pem in (demo.state_dir / "keys").glob("*.pem"):
        secrets[f"private key {pem.name}"] = "".join(pem.read_text().splitlines()[1:-1])[:64]
    database = (demo.state_dir / "hub" / "jupyterhub.sqlite").read_bytes()
    for what, value in secrets.items():
        assert value not in logs.replace("\n", ""), f"the {what} is in a log"
        assert value.encode() not in database, f"the {what} is in the hub's database"


def _session_secrets(demo: DemoProcess, patient: str) -> dict[str, str]:
    """The user's JupyterHub API token and a current SMART access token, as the kernel has them.

    The API token is read from the single-user server's environment (where the hub put
    it); with it, the hub's token API hands out the access token, for the launched patient.
    """
    servers = [p for p in demo.descendants() if "jupyterhub-singleuser" in " ".join(p.cmdline())]
    assert len(servers) == 1, "one single-user server for the practitioner, whatever the launches"
    environ = servers[0].environ()
    assert environ.get("SMART_TOKEN_API_URL", "").endswith("/hub/api/smart/token")
    api_token = environ["JUPYTERHUB_API_TOKEN"]
    assert not any("eyJ" in value for value in environ.values()), "a JWT in the server's env"
    response = httpx.get(
        f"{demo.hub_url}/hub/api/smart/token",
        headers={"Authorization": f"token {api_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == patient
    assert "refresh_token" not in body
    # The single-user environment holds no SMART token: only the way to ask the hub for one.
    assert not any(body["access_token"] in value for value in environ.values())
    return {"JupyterHub API token": api_token, "access token": body["access_token"]}
