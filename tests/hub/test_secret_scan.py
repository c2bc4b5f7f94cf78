"""The session's secret scan (``leak_scan``): fed by real logins, and failing the run on a leak.

The scan itself runs when the session ends; these tests check what feeds it
(one login's code, nonce, tokens, client assertion and the hub's files) and,
in a pytest of its own, that a secret planted in a real hub's log fails that
run, also under ``-p xdist -n 2``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hub_process import Browser, location, query
from leak_scan import Ledger

from .conftest import EvilEnv, SmartEnv

TESTS = Path(__file__).resolve().parents[1]

# The test harness's scan: the same whatever JupyterHub and database the hubs run
pytestmark = pytest.mark.one_pass


def test_a_login_reports_its_secrets_and_the_hubs_files(
    evil_env: EvilEnv, secret_scan: Ledger
) -> None:
    hub, evil = evil_env.hub, evil_env.evil
    evil.mode = "good"
    code = "evil-code-" + secrets.token_urlsafe(12)
    with Browser() as browser:
        start = browser.get(hub.login_url, params={"iss": evil.iss})
        params = query(location(start))
        evil.nonce = params["nonce"]
        answer = browser.get(hub.callback_url, params={"code": code, "state": params["state"]})
    assert answer.status_code == 302, answer.text[:1000]
    seen = secret_scan.secrets
    assert seen[code] == "authorization code"
    assert seen[params["nonce"]] == "nonce"
    form = next(f for f in reversed(evil.received) if f.get("code") == code)
    assert seen[form["client_assertion"]] == "client assertion"
    assert seen[form["code_verifier"]] == "code verifier"
    assert {seen[t] for t in evil.issued[-2:]} == {"access token", "refresh token"}
    assert seen[evil.client_secret] == "client secret"
    # the hub logged its redirect to the EHR with the nonce scrubbed, as JupyterHub does codes
    log = hub.wait_for_log("nonce=[secret]")
    assert "nonce=[secret]" in log and params["nonce"] not in log
    files = {hub.log_path.resolve(), hub.audit_path.resolve(), hub.db_path.resolve()}
    assert files <= secret_scan.hub_files


def test_every_sandbox_reports_its_log_and_its_patients(
    smart_env: SmartEnv, secret_scan: Ledger
) -> None:
    for sandbox in (smart_env.public, smart_env.jwt):
        assert sandbox.log_path.resolve() in secret_scan.files
        assert (sandbox.data_dir / "fhir.sqlite").resolve() in secret_scan.sandbox_stores


def test_the_scan_finds_secrets_anywhere_and_names_only_as_whole_words(tmp_path: Path) -> None:
    """What the scan reports for the files it reads: a secret inside any text (overlapping
    secrets each), a patient's name or birth date only as a word of its own in a hub's file."""
    ledger = Ledger()
    ledger.add("tok-0123456789", kind="access token")
    ledger.add("tok-0123456789abcdef", kind="refresh token")
    ledger.add("sec-ABCDEFGHIJ", kind="client secret")
    ledger.add("not-written-anywhere", kind="nonce")
    ledger.add_words("Ana", kind="patient name")
    ledger.add_words("1987-03-04", kind="patient birth date")
    ehr_log, hub_log, trail = tmp_path / "a-ehr.log", tmp_path / "b-hub.log", tmp_path / "c.jsonl"
    ehr_log.write_text("Ana 1987-03-04 sec-ABCDEFGHIJ")  # names are the EHR's own business
    hub_log.write_text("GET /x?t=xtok-0123456789abcdefx\nAnatomy of Ana.")
    trail.write_text("Anatomy _Ana Ana\u00e9 Ana-1 1987-03-045 -1987-03-04 x1987-03-04")
    ledger.files.add(ehr_log)
    ledger.hub_files |= {hub_log, trail, tmp_path / "never-written.sqlite"}
    assert ledger.leaks() == [
        f"{ehr_log}: client secret",
        f"{hub_log}: access token, patient name, refresh token",
    ]


PLANTED_RUN = """
import os

import httpx
from hub_process import run_hub
from leak_scan import saw

SECRET = os.environ["PLANTED_SECRET"]


def test_a_hub_sees_a_secret(tmp_path):
    with run_hub(tmp_path / "hub") as hub:
        saw(SECRET, kind="planted token")
        if os.environ.get("PLANT") == "1":  # the hub's access log writes the query
            assert httpx.get(hub.url + "/hub/api/", params={"x": SECRET}).status_code == 200


def test_something_else():
    assert True
"""


def _run_planted(tmp_path: Path, plant: bool, *args: str) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
            import sys

            sys.path.insert(0, {str(TESTS)!r})
            from leak_scan import secret_scan  # noqa: F401
        """)
    )
    (tmp_path / "test_planted.py").write_text(PLANTED_RUN)
    secret = "planted-" + secrets.token_hex(16)
    env = {**os.environ, "PLANTED_SECRET": secret, "PLANT": "1" if plant else "0"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert secret not in result.stdout + result.stderr  # the report names the kind only
    return result


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [[], ["-p", "xdist", "-n", "2"]], ids=["serial", "xdist"])
def test_a_secret_planted_in_a_hub_log_fails_the_run(tmp_path: Path, xdist: list[str]) -> None:
    planted = _run_planted(tmp_path / "planted", True, *xdist)
    output = planted.stdout + planted.stderr
    assert planted.returncode == 1, output
    assert "2 passed, 1 error" in output, output
    assert "secrets found in files" in output and "jupyterhub.log: planted token" in output


@pytest.mark.slow
def test_the_same_run_without_the_plant_passes(tmp_path: Path) -> None:
    clean = _run_planted(tmp_path / "clean", False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "2 passed" in clean.stdout
