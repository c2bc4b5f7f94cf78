"""Optional extras: the client side needs none of the sandbox's servers, and their commands
say in one line what to install when they are missing.

Each check runs in a subprocess whose ``sys.modules`` marks the extra's
packages as absent, which is what Python does for a package that is not
installed (``ModuleNotFoundError``, ``find_spec`` finds nothing).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SANDBOX_EXTRA = ("flask", "waitress", "authlib")
DEMO_EXTRA = (*SANDBOX_EXTRA, "jupyterlab", "ipykernel", "matplotlib")


def run_without(modules: tuple[str, ...], code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    hide = f"import sys\nsys.modules.update(dict.fromkeys({modules!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", hide + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_client_side_imports_none_of_the_sandbox_servers(tmp_path: Path) -> None:
    """Every module outside the sandbox imports without Flask, Waitress or Authlib."""
    code = (
        "import importlib, pkgutil, jupyterhub_smart\n"
        "failed = []\n"
        "for info in pkgutil.walk_packages(jupyterhub_smart.__path__, 'jupyterhub_smart.'):\n"
        "    sandbox = info.name.startswith('jupyterhub_smart.sandbox.')\n"
        "    if info.name.endswith('__main__') or (sandbox and not info.name.endswith('.cli')):\n"
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{info.name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "print(sorted(m for m in sys.modules if m.startswith('jupyterhub_smart.')))\n"
    )
    result = run_without(SANDBOX_EXTRA, code, tmp_path)
    assert result.returncode == 0, result.stderr
    failed, imported = result.stdout.rsplit("\n", 2)[:2]
    assert failed.strip() == ""
    for module in ("hub.authenticator", "notebook.client", "smart.tokens", "audit.log", "demo"):
        assert f"'jupyterhub_smart.{module}'" in imported


def test_the_sandbox_needs_its_servers(tmp_path: Path) -> None:
    """The check above would notice: the sandbox's app does not import without them."""
    result = run_without(SANDBOX_EXTRA, "import jupyterhub_smart.sandbox.app\n", tmp_path)
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize(
    ("args", "hidden", "line"),
    [
        (
            ["sandbox", "--data-dir", "data"],
            SANDBOX_EXTRA,
            "jupyterhub-smart sandbox: missing flask, waitress, authlib; "
            "install with: pip install 'jupyterhub-smart[sandbox]'",
        ),
        (
            ["demo", "--state-dir", "state"],
            ("jupyterlab",),
            "jupyterhub-smart demo: missing jupyterlab; "
            "install with: pip install 'jupyterhub-smart[demo]'",
        ),
    ],
)
def test_command_without_its_extra_says_what_to_install(
    tmp_path: Path, args: list[str], hidden: tuple[str, ...], line: str
) -> None:
    code = f"from jupyterhub_smart.cli import main\nsys.exit(main({args!r}))\n"
    result = run_without(hidden, code, tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]
    assert list(tmp_path.iterdir()) == []  # nothing generated or started


def test_help_works_without_any_extra(tmp_path: Path) -> None:
    code = (
        "from jupyterhub_smart.cli import main\n"
        "for command in ('sandbox', 'demo'):\n"
        "    try:\n"
        "        main([command, '--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
    )
    result = run_without((*DEMO_EXTRA, "pandas"), code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: jupyterhub-smart sandbox" in result.stdout
    assert "usage: jupyterhub-smart demo" in result.stdout
