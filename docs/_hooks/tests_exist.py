"""MkDocs hook: every test a page names must exist, in the file it is said to be in.

The security model maps threats and HIPAA safeguards to the tests that check
them. A renamed or deleted test would leave the page promising a check that no
longer runs, so the build fails instead. Recognised forms, in backticks:

* ``path/test_file.py::test_name`` (path relative to ``tests/``, or starting
  with ``tests/``): the function must be defined in that file;
* ``tests/path/test_file.py``: followed by a list of `` `test_name` ``: each
  must be defined in that file;
* any other `` `test_name` ``: it must be defined in some file under ``tests/``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

TESTS = Path(__file__).resolve().parents[2] / "tests"
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(test_\w+)", re.MULTILINE)
_QUALIFIED = re.compile(r"`(?:tests/)?([\w/]+\.py)::(test_\w+)`")
_LISTED = re.compile(r"`tests/([\w/]+\.py)`:((?:\s*`test_\w+`(?:\s*\([^)]*\))?,?)+)")
_BARE = re.compile(r"`(test_\w+)`")


@cache
def _defined() -> dict[str, frozenset[str]]:
    """Test functions per file, keyed by the path relative to ``tests/``."""
    return {
        path.relative_to(TESTS).as_posix(): frozenset(_DEF.findall(path.read_text()))
        for path in TESTS.rglob("test_*.py")
    }


def missing_tests(markdown: str) -> list[str]:
    """Test references in ``markdown`` that do not exist (as ``file::name`` or ``name``)."""
    defined = _defined()
    everywhere = frozenset().union(*defined.values())
    problems: list[str] = []
    placed: set[str] = set()
    pairs = _QUALIFIED.findall(markdown)
    for match in _LISTED.finditer(markdown):
        pairs.extend((match.group(1), name) for name in _BARE.findall(match.group(2)))
    for path, name in pairs:
        placed.add(name)
        if name not in defined.get(path, frozenset()):
            problems.append(f"{path}::{name}")
    for name in _BARE.findall(markdown):
        if name not in placed and name not in everywhere:
            problems.append(name)
    return sorted(set(problems))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Fail the build when a page names a test that does not exist."""
    problems = missing_tests(markdown)
    if problems:
        where = getattr(getattr(page, "file", None), "src_uri", "a page")
        raise PluginError(f"{where} names tests that do not exist: {', '.join(problems)}")
    return markdown
