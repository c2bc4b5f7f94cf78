"""The demo notebook in FHIR proxy mode, in a real browser: no EHR token in the kernel, all in the trail.

``jupyterhub-smart demo --fhir-access proxy --auto-approve`` runs the sandbox and
a hub whose notebooks reach the FHIR server only through the hub's proxy.
Headless Chromium launches patient A from the EHR page, runs every cell of
``patient-vitals.ipynb`` in JupyterLab, then runs a cell that looks for EHR
tokens where a kernel could find one (its environment, ``/proc/self/environ``,
the hub's token API). Afterwards the proxy's trail is read: one record per FHIR
request the proxy logged, every one of the practitioner's, and the resources
it counted for the heart-rate and weight searches equal the rows the notebook
got.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    wait_for_notebook,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e-proxy"

#: Typed into a new cell: where could this kernel find an EHR token? One JSON line.
PROBE = (
    "import json, os, requests\n"
    "raw = open('/proc/self/environ', 'rb').read()\n"
    "api = os.environ['JUPYTERHUB_API_URL'] + '/smart/token'\n"
    "refused = requests.get(api, headers={'Authorization': 'token ' + "
    "os.environ['JUPYTERHUB_API_TOKEN']}, timeout=30)\n"
    "print('PROBE ' + json.dumps({'token_api_url': 'SMART_TOKEN_API_URL' in os.environ, "
    "'proxy_url': os.environ.get('SMART_FHIR_PROXY_URL'), 'jwt_in_environ': b'eyJ' in raw, "
    "'token_api': [refused.status_code, refused.json().get('error')], "
    "'heart_rate': len(heart_rate), 'weight': len(weight), 'patient': context.patient}))"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    chromium_or_skip()
    state = tmp_path_factory.mktemp("e2e-proxy") / "demo"
    with run_demo(state, extra_args=["--fhir-access", "proxy", "--auto-approve"]) as process:
        yield process


def _records(demo: DemoProcess) -> list[dict[str, Any]]:
    """The proxy's records, in the hub's audit log (the proxy sends them there)."""
    path = demo.state_dir / "hub" / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if _details(r).get("recorded-by") == "fhir-proxy"]


def _details(record: dict[str, Any]) -> dict[str, str]:
    return {
        d["type"]: d["valueString"] for e in record.get("entity", []) for d in e.get("detail", [])
    }


def test_demo_notebook_in_proxy_mode(demo: DemoProcess) -> None:
    expect = sync_api.expect
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_or_skip(), args=CHROMIUM_FLAGS, headless=True
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        try:
            page = context.new_page()
            page.goto(demo.ehr_url)
            (_name, patient), *_ = patient_rows(page)
            launch(page, patient)
            wait_for_notebook(page)
            run_all(page)
            summary = page.locator(".jp-OutputArea-output", has_text="heart rate readings")
            expect(summary).to_be_visible(timeout=SLOW_MS)
            cell = run_new_cell(page, PROBE)
            output = cell.locator(".jp-OutputArea")
            expect(output).to_contain_text("PROBE ", timeout=SLOW_MS)
            page.screenshot(path=str(ARTIFACTS / "proxy-mode-probe.png"))
            text = output.inner_text()
        except Exception:
            for number, open_page in enumerate(context.pages):
                open_page.screenshot(path=str(ARTIFACTS / f"failure-{number}.png"))
            raise
        finally:
            context.close()
            browser.close()
    probe = json.loads(re.search(r"PROBE (\{.*\})", text).group(1))  # type: ignore[union-attr]
    assert probe["patient"] == patient
    assert probe["token_api_url"] is False
    assert probe["proxy_url"].endswith("/services/smart-fhir/")
    assert probe["jwt_in_environ"] is False
    assert probe["token_api"] == [403, "proxy_mode"]

    # Every FHIR request the proxy answered is one record of the practitioner, in order.
    logged = re.findall(
        r"jupyterhub_smart\.proxy\] (\d{3}) (GET|POST) /services/smart-fhir/[a-z0-9-]+/\S+",
        demo.logs(),
    )
    records = _records(demo)
    assert logged and len(records) == len(logged)
    assert [_details(r)["http-status"] for r in records] == [status for status, _ in logged]
    users = {r["agent"][0]["altId"] for r in records}
    assert len(users) == 1 and next(iter(users)).startswith("practitioner-")
    # The resources the proxy counted are the rows the notebook got.
    for code, rows in (("8867-4", probe["heart_rate"]), ("29463-7", probe["weight"])):
        searched = [r for r in records if _details(r).get("query:code") == code]
        assert searched, code
        assert sum(int(_details(r)["count"]) for r in searched) == rows
        assert all(
            {e["what"]["reference"] for e in r["entity"] if e.get("role", {}).get("code") == "1"}
            <= {f"Patient/{patient}"}
            for r in searched
        )
