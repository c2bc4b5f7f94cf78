"""The sub-packages import each other only in the directions the package docstring states.

Read from the source (every ``import`` and ``from ... import``, relative ones
resolved), so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jupyterhub_smart"
#: sub-package -> the sub-packages it may import (see jupyterhub_smart/__init__.py)
ALLOWED: dict[str, set[str]] = {
    "smart": set(),
    "views": set(),
    "audit": {"smart"},
    "hub": {"smart", "audit", "views"},
    "bulk": {"smart", "audit", "views"},
    "proxy": {"smart", "audit", "views"},
    "notebook": {"smart", "audit", "views", "bulk"},
    "sandbox": set(),
}
#: Top-level modules: the command line and the demo, which may use any part.
TOP_LEVEL = {"cli", "demo", "__main__", "__init__"}


def imported_parts(path: Path, package_dir: Path = PACKAGE) -> set[tuple[str, str]]:
    """``(part, line)`` for each ``jupyterhub_smart.<part>`` that ``path`` imports."""
    module = path.relative_to(package_dir.parent).with_suffix("").parts
    package = module if path.name == "__init__.py" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            names = [target] if len(target) > 1 else [[*target, a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        for name in names:
            if name[0] == "jupyterhub_smart" and len(name) > 1:
                found.add((name[1], f"{path.relative_to(package_dir.parent)}:{node.lineno}"))
    return found


def test_sub_packages_import_in_one_direction() -> None:
    wrong = []
    for part, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / part).rglob("*.py")):
            for target, where in imported_parts(path):
                if target == part or target in allowed:
                    continue
                if target == "cli" and path.name == "cli.py":
                    continue  # sub-commands share the argument types of jupyterhub_smart.cli
                wrong.append(f"{where} imports jupyterhub_smart.{target}")
    assert wrong == []


def test_every_sub_package_has_a_rule() -> None:
    parts = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert parts == set(ALLOWED)
    assert modules <= TOP_LEVEL


def test_the_reader_sees_an_import_against_the_rules(tmp_path: Path) -> None:
    """The check resolves relative imports: it would catch the notebook importing the hub."""
    package_dir = tmp_path / "jupyterhub_smart"
    probe = package_dir / "notebook" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from ..hub import tokenstate\n"
        "from . import client\n"
        "def later():\n"
        "    import jupyterhub_smart.audit.log\n"
    )
    assert {part for part, _ in imported_parts(probe, package_dir)} == {"hub", "notebook", "audit"}
