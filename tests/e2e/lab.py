"""JupyterLab and the sandbox's EHR page driven through Playwright: helpers of the e2e tests.

Debian's ``chromium`` is used (``executable_path``), never a Playwright download.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest
from playwright import sync_api

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Generous: the first JupyterLab start on a loaded two-core machine is slow.
SLOW_MS = 150_000


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip(
            "Debian's chromium is not installed (`make test` installs it as root via "
            ".ci/install-chromium; or `apt-get install -y chromium`)"
        )
    return path


def patient_rows(page: Any) -> list[tuple[str, str]]:
    """(name, id) of each patient on the EHR page."""
    rows = []
    for row in page.locator("table tr").filter(has=page.locator("button", has_text="Launch")).all():
        first = row.locator("td").first
        patient_id = first.locator("code").inner_text().strip()
        name = first.inner_text().replace(patient_id, "").strip()
        rows.append((name, patient_id))
    return rows


def launch(page: Any, patient_id: str) -> None:
    """Press Launch on the patient's row (the form carries the patient id)."""
    row = page.locator("table tr").filter(
        has=page.locator(f'input[name="patient"][value="{patient_id}"]')
    )
    row.get_by_role("button", name="Launch").click()


def wait_for_notebook(page: Any) -> None:
    """JupyterLab is up with patient-vitals.ipynb open and its kernel idle."""
    expect = sync_api.expect
    page.wait_for_url(re.compile(r"/lab/tree/patient-vitals\.ipynb"), timeout=SLOW_MS)
    expect(page.locator(".jp-NotebookPanel:visible .jp-Cell").first).to_be_visible(timeout=SLOW_MS)
    # The status bar names the kernel once it is connected, and says Idle once it is ready.
    kernel = page.get_by_role("button", name="Python 3 (ipykernel) | Idle")
    expect(kernel).to_be_visible(timeout=SLOW_MS)
    # The demo turned JupyterLab's "fetch news from the internet?" question off.
    expect(page.get_by_text("get notified about official Jupyter news")).to_have_count(0)


def scroll_to_top(page: Any) -> None:
    """JupyterLab renders only the cells in view: scroll up to read the first outputs."""
    outer = page.locator(".jp-NotebookPanel:visible .jp-WindowedPanel-outer")
    outer.evaluate("element => { element.scrollTop = 0; }")


def run_all(page: Any) -> None:
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()


def run_new_cell(page: Any, code: str) -> Any:
    """Add a code cell at the end of the notebook, type ``code``, run it; return the cell."""
    cells = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
    count = cells.count()
    if cells.last.locator(".cm-content").inner_text().strip():
        cells.last.locator(".jp-InputArea-prompt").click()
        page.keyboard.press("Escape")
        page.keyboard.press("b")
        sync_api.expect(cells).to_have_count(count + 1)
        count += 1
    # else: Shift+Enter on the last cell left an empty one below it; use that.
    new = cells.nth(count - 1)
    new.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    sync_api.expect(new.locator(".jp-InputArea-prompt")).to_have_text(
        re.compile(r"\[\d+\]"), timeout=SLOW_MS
    )
    new.scroll_into_view_if_needed()
    return new
