"""Files the package's docstrings and comments point a reader to exist in the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``docs/audit.md``, ``tests/test_layers.py``, ``bench/x.py`` or a top-level ``NAME.md``.
_REFERENCE = re.compile(r"\b(?:(?:docs|tests|bench)/[\w./-]+\.(?:md|py)|[A-Z][A-Z_-]+\.md)\b")


def references(text: str) -> set[str]:
    return set(_REFERENCE.findall(text))


def test_referenced_files_exist() -> None:
    missing = sorted(
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in (REPO_ROOT / "jupyterhub_smart").rglob("*.py")
        for name in references(path.read_text(encoding="utf-8"))
        if not (REPO_ROOT / name).is_file()
    )
    assert missing == []


def test_the_pattern_finds_what_a_reader_would_follow() -> None:
    text = "see docs/audit.md and DESIGN.md; tests/test_layers.py holds it (not e.g. foo/bar.md)"
    assert references(text) == {"docs/audit.md", "DESIGN.md", "tests/test_layers.py"}
