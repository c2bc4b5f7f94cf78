"""The built wheel, installed into a fresh virtualenv outside the checkout, is complete.

``pip install jupyterhub-smart`` gets the wheel, not this source tree: every
template, built-in view and demo notebook must be inside it, and the code must
find them there. The wheel is built from a copy of the sources and installed
with pip (``--no-deps``); the new venv reaches the dependencies through a
``.pth`` line to this test run's site-packages (resolving them again would
take minutes and test pip, not us). The package itself is imported from the
new venv only: the checkout is neither the working directory nor on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "jupyterhub_smart"
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "site", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return subprocess.run(
            args, capture_output=True, text=True, timeout=300, cwd=self.work, env=env
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    sources = root / "src"
    shutil.copytree(REPO_ROOT, sources, ignore=_NOT_SOURCES)
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(sources),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = dist.glob("jupyterhub_smart-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    work = root / "elsewhere"
    work.mkdir()
    yield Installed(wheel, venv, work)


def test_the_wheel_holds_every_data_file_of_the_package(installed: Installed) -> None:
    """Templates, views, demo notebooks...: each non-Python file of the package is in it."""
    data = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert "jupyterhub_smart/demo_notebooks/patient-vitals.ipynb" in data
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert sorted(data - names) == []


def test_installed_package_comes_from_the_venv_and_finds_its_notebooks(
    installed: Installed,
) -> None:
    code = (
        "import jupyterhub_smart, jupyterhub_smart.demo as demo\n"
        "print(jupyterhub_smart.__file__)\n"
        "print(demo.DEMO_NOTEBOOKS)\n"
        "print(sorted(p.name for p in demo.DEMO_NOTEBOOKS.glob('*.ipynb')))\n"
    )
    result = installed.run(str(installed.venv / "bin" / "python"), "-c", code)
    assert result.returncode == 0, result.stderr
    package_file, notebooks, names = result.stdout.splitlines()
    assert Path(package_file).is_relative_to(installed.venv)
    assert Path(notebooks).is_relative_to(installed.venv)
    assert names == "['patient-vitals.ipynb']"


def test_installed_command_runs(installed: Installed) -> None:
    command = str(installed.venv / "bin" / "jupyterhub-smart")
    for sub in ("demo", "sandbox"):
        result = installed.run(command, sub, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: jupyterhub-smart {sub}" in result.stdout


def test_installed_view_command_finds_the_builtin_views(installed: Installed) -> None:
    """The built-in views are package data: the installed command loads and validates them."""
    command = str(installed.venv / "bin" / "jupyterhub-smart")
    for name in ("Observation", "DocumentReference"):
        result = installed.run(command, "view", "check", name)
        assert result.returncode == 0, result.stderr
        assert f"valid view of {name}" in result.stdout
