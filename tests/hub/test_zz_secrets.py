"""After every other hub test: no secret in any hub log, audit log or database.

Runs last in the package (file order) so that it sees the logs of every login,
refresh, refusal and fault above. The secrets come from where they were used:
codes from the URLs the browsers followed, tokens from auth_states and from
what the misbehaving EHR issued, client assertions and the client secret from
what it received.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from .conftest import READER_CLIENT, EvilEnv, SmartEnv
from .harness import LAUNCHED, SEEN_TOKENS, VISITED, query
from .test_attacks import CODES


def _secrets(evil_env: EvilEnv) -> list[str]:
    found = set(SEEN_TOKENS) | set(CODES) | set(evil_env.evil.issued)
    found |= {query(url)["code"] for url in VISITED if "code=" in url and "code" in query(url)}
    for form in evil_env.evil.received:
        found |= {form[k] for k in ("code", "client_assertion", "code_verifier") if k in form}
        if form.get("authorization"):
            found.add(form["authorization"].split(" ", 1)[1])
    found.add(evil_env.evil.client_secret)
    return sorted(s for s in found if s and len(s) >= 8)


def _hub_files(root: Path, name: str) -> list[Path]:
    return sorted(p for p in root.rglob(name) if "env" in str(p))


def test_no_secret_in_hub_logs_audit_logs_or_databases(
    smart_env: SmartEnv, evil_env: EvilEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    secrets = _secrets(evil_env)
    # enough of each kind to make the check mean something
    assert len([s for s in secrets if s.startswith("evil-code-")]) >= 10
    assert len(SEEN_TOKENS) >= 10 and any(len(s) > 300 for s in secrets)  # assertions, JWTs
    root = tmp_path_factory.getbasetemp()
    logs = _hub_files(root, "jupyterhub.log")
    audits = _hub_files(root, "jupyterhub-smart-audit.jsonl")
    databases = _hub_files(root, "jupyterhub.sqlite")
    assert len(logs) >= 2 and audits and databases
    for path in [*logs, *audits]:
        text = path.read_text(errors="replace")
        leaked = [s[:12] + "..." for s in secrets if s in text]
        assert not leaked, f"{path}: {leaked}"
    for path in databases:
        data = path.read_bytes()
        leaked = [s[:12] + "..." for s in secrets if s.encode() in data]
        assert not leaked, f"{path}: {leaked}"
    # the hub did log the refusals (the check above is not passing on an empty log)
    assert re.search(r"refused \(403 invalid_id_token\)", evil_env.hub.log_text())


def _clinical_values(env: SmartEnv) -> dict[str, list[str]]:
    """Names and birth dates of every launched patient, read from the EHR's FHIR API.

    The token is a Backend Services one (client_credentials, ``system/Patient.rs``)
    of the test reader client at sandbox B.
    Every sandbox of these tests serves the same synthetic patients (run_sandbox's
    default seed and count), so sandbox B answers for the launches at the others too.
    """
    sandbox = env.jwt
    token_url = sandbox.origin + "/auth/token"
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    reader = (str(READER_CLIENT["client_id"]), str(READER_CLIENT["client_secret"]))
    answer = httpx.post(token_url, data=form, auth=reader, timeout=30)
    assert answer.status_code == 200, answer.text
    bearer = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    values: dict[str, list[str]] = {}
    for patient in sorted({pid for _origin, pid in LAUNCHED}):
        response = httpx.get(f"{sandbox.iss}/Patient/{patient}", headers=bearer, timeout=30)
        assert response.status_code == 200, (patient, response.text[:300])
        resource = response.json()
        names = [
            part
            for name in resource.get("name", [])
            for part in [name.get("family"), *name.get("given", [])]
            if isinstance(part, str) and len(part) >= 3
        ]
        values[patient] = [*names, resource["birthDate"]]
    return values


def test_no_clinical_value_in_hub_logs_audit_logs_or_databases(
    smart_env: SmartEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Patient names and birth dates never reach a hub log, audit trail or database
    (identifiers such as Patient/123 may: they are what an audit trail is for)."""
    values = _clinical_values(smart_env)
    assert len(values) >= 2  # several patients were launched: the check means something
    patterns = {
        value: re.compile(rf"(?<![\w-]){re.escape(value)}(?![\w-])")
        for found in values.values()
        for value in found
    }
    root = tmp_path_factory.getbasetemp()
    files = [
        *_hub_files(root, "jupyterhub.log"),
        *_hub_files(root, "jupyterhub-smart-audit.jsonl"),
        *_hub_files(root, "jupyterhub.sqlite"),
    ]
    assert len(files) >= 6
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        leaked = sorted(value for value, pattern in patterns.items() if pattern.search(text))
        assert not leaked, f"{path}: {leaked}"
    # the trails do name the launched patients (by id): the check is not on empty files
    audits = "".join(p.read_text() for p in _hub_files(root, "jupyterhub-smart-audit.jsonl"))
    assert all(f"Patient/{patient}" in audits for patient in values)
