"""The audit page in headless Chromium (Debian's ``chromium``), as a privacy officer uses it.

A real hub (``hub_process.AUDIT_REVIEW_CONFIG``) records notebook reports from
two users, one of whom roams over patients until the spread alert fires. The
officer signs in on JupyterHub's login page, opens ``/hub/smart/audit``,
filters by a patient (who accessed it), follows a user link (which patients
they touched), pages, lists the alerts and downloads the CSV export. A user
without the scope gets the 403 page. Screenshots go to
``test-artifacts/audit-page/``; ``E2E_DOCS_SCREENSHOTS=1`` refreshes the copies
in ``docs/img/`` that docs/audit.md shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_process import AUDIT_REVIEW_CONFIG, Hub, run_hub
from playwright import sync_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "audit-page"
DOCS_IMG = REPO_ROOT / "docs" / "img"
DOCS_SHOTS = {
    "01-audit-page": "audit-page.png",
    "02-audit-patient": "audit-page-patient.png",
    "03-audit-user": "audit-page-user.png",
    "04-audit-alerts": "audit-page-alerts.png",
}
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (`make browser`)")
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[Hub]:
    with run_hub(tmp_path_factory.mktemp("audit-browser"), extra=AUDIT_REVIEW_CONFIG) as running:
        yield running


def _report(hub: Hub, user: str, patients: list[str]) -> None:
    token = hub.user_token(user, create=True)
    events = [
        {
            "interaction": "search-type",
            "resource_type": kind,
            "search_params": ["patient", "code"],
            "count": 4 + i,
            "status": 200,
            "patient": patient,
        }
        for i, patient in enumerate(patients)
        for kind in ("Observation", "Condition")
    ]
    with hub.api(token) as client:
        assert client.post("/smart/audit", json={"events": events}).status_code == 201


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("E2E_DOCS_SCREENSHOTS") == "1" and name in DOCS_SHOTS:
        from PIL import Image

        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=256).save(
                DOCS_IMG / DOCS_SHOTS[name], optimize=True
            )


def _sign_in(page: Any, hub: Hub, name: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", "any")
    page.click("#login_submit")
    page.wait_for_url(f"{hub.url}/hub/**")


def test_a_privacy_officer_reviews_who_accessed_a_patient(hub: Hub, chromium_path: str) -> None:
    _report(hub, "dr-grey", ["Patient/p100", "Patient/p200"])
    _report(hub, "dr-roam", [f"Patient/p{n}" for n in (100, 300, 400, 500)])  # 4 > limit 3
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            _sign_in(page, hub, "officer")
            page.goto(f"{hub.url}/hub/smart/audit")
            expect(page.locator("#chain-status")).to_contain_text("Verified head: seq")
            expect(page.locator("#checkpoint")).to_contain_text("none")
            expect(page.locator("#audit-events tbody tr").first).to_be_visible()
            _shot(page, "01-audit-page")

            page.fill("#f-patient", "p100")
            page.click("#audit-filters button[type=submit]")
            expect(page.locator("#by-user")).to_contain_text("dr-grey")
            expect(page.locator("#by-user")).to_contain_text("dr-roam")
            expect(page.locator("#audit-total")).to_contain_text("4 matching")
            _shot(page, "02-audit-patient")

            page.locator("#by-user a", has_text="dr-roam").click()
            expect(page.locator("#by-patient")).to_contain_text("Patient/p500")
            _shot(page, "03-audit-user")

            page.goto(f"{hub.url}/hub/smart/audit?type=alert-*")
            expect(page.locator("#audit-events")).to_contain_text("alert-patient-spread")
            expect(page.locator("#audit-events tr.table-danger").first).to_be_visible()
            _shot(page, "04-audit-alerts")

            with page.expect_download() as download:
                page.goto(f"{hub.url}/hub/smart/audit?patient=p100")
                page.click("#csv-export")
            text = Path(download.value.path()).read_text()
            assert text.splitlines()[0].startswith("seq,time,action")
            assert len(text.splitlines()) == 1 + 4

            other = browser.new_context().new_page()
            _sign_in(other, hub, "nosy")
            answer = other.goto(f"{hub.url}/hub/smart/audit")
            assert answer is not None and answer.status == 403
            expect(other.locator("#audit-error")).to_contain_text("custom:smart:audit-read")
            expect(other.locator("#audit-events")).to_have_count(0)
            assert "Patient/p100" not in other.content()
            _shot(other, "05-audit-refused")
        finally:
            browser.close()
