"""The core stays framework-free: importing every module pulls in no tornado or jupyterhub."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "authorize",
    "client_auth",
    "discovery",
    "errors",
    "fhir_rules",
    "id_token",
    "issuers",
    "keys",
    "keys_cli",
    "launch_context",
    "pkce",
    "scopes",
    "singleflight",
    "tokens",
]


def test_no_framework_imports() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module('jupyterhub_smart.smart.' + m)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('tornado', 'jupyterhub', 'oauthenticator', 'flask', 'authlib', 'traitlets'))\n"
        "bad += sorted(n for n in sys.modules if n.startswith(('jupyterhub_smart.hub', "
        "'jupyterhub_smart.sandbox', 'jupyterhub_smart.notebook', 'jupyterhub_smart.audit')))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_keys_cli_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import jupyterhub_smart.smart.keys_cli\n"
        "print(','.join(n for n in ('joserfc', 'httpx', 'cryptography') if n in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_fhir_rules_use_the_standard_library_only() -> None:
    """Kernels, the hub and the audit trail all import the rules: they must cost nothing."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import jupyterhub_smart.smart.fhir_rules\n"
        "new = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'jupyterhub_smart'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
