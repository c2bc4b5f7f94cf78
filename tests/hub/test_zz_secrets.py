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

import pytest

from .conftest import EvilEnv, SmartEnv
from .harness import SEEN_TOKENS, VISITED, query
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
