"""The session's secret scan: every secret the tests saw, looked for in every file our processes wrote.

Helpers and tests report each secret they handle with :func:`saw` (tokens from
an auth_state, codes and nonces from the URLs a browser followed, client
assertions and secrets an EHR received, ...) and each file a hub or sandbox
writes with :func:`wrote` (hub logs, audit trails, hub databases, sandbox logs).
The patients of every sandbox are read from its store (:func:`wrote_sandbox`),
and their names and birth dates are looked for in the hub's files
(:func:`hub_wrote`), as whole words.

The ``secret_scan`` session fixture (autouse, from ``tests/conftest.py``)
collects for the whole session and reads the files when the session ends: no
test has to run last, and under pytest-xdist each worker scans what it saw. A
finding fails the run as an error at teardown. Outside a pytest session (the
benchmarks use the same harness) nothing is collected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ahocorasick
import pytest

#: Shorter values (``"none"``, ``"1"``) would match by chance; no real secret is this short.
MIN_SECRET_LENGTH = 8
#: Name parts shorter than this (initials) are not looked for.
MIN_WORD_LENGTH = 3


@dataclass
class Ledger:
    """What one session saw (value -> what it is) and the files to search for it."""

    secrets: dict[str, str] = field(default_factory=dict)
    words: dict[str, str] = field(default_factory=dict)
    files: set[Path] = field(default_factory=set)
    #: Files that must not hold clinical values either (the hub's; the EHR's may).
    hub_files: set[Path] = field(default_factory=set)
    sandbox_stores: set[Path] = field(default_factory=set)

    def add(self, *values: object, kind: str = "secret") -> None:
        """Remember each non-empty string of ``values`` as a secret of kind ``kind``."""
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
                self.secrets.setdefault(value, kind)

    def add_words(self, *values: object, kind: str) -> None:
        """Remember values (names, dates) that must not appear as whole words."""
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_WORD_LENGTH:
                self.words.setdefault(value, kind)

    def _read_sandbox_patients(self) -> None:
        from jupyterhub_smart.sandbox.fhir.store import FHIRStore

        for db_path in sorted(self.sandbox_stores):
            if not db_path.exists():
                continue
            store = FHIRStore(db_path)
            try:
                for patient in store.list_patients(limit=10_000):
                    for name in patient.get("name") or []:
                        parts = [name.get("family"), *(name.get("given") or [])]
                        self.add_words(*parts, kind="patient name")
                    self.add_words(patient.get("birthDate"), kind="patient birth date")
            finally:
                store.close()

    def leaks(self) -> list[str]:
        """One line per secret found in a file, naming the file and the kind (not the value)."""
        self._read_sandbox_patients()
        secrets, words = _automaton(self.secrets), _automaton(self.words)
        found: list[str] = []
        for path in sorted(self.files | self.hub_files):
            if not path.is_file():
                continue
            text = path.read_bytes().decode("utf-8", "replace")
            kinds = _kinds_in(text, secrets)
            if path in self.hub_files:
                kinds |= _kinds_in(text, words, whole_words=True)
            if kinds:
                found.append(f"{path}: {', '.join(sorted(kinds))}")
        return found


def _automaton(values: Mapping[str, str]) -> ahocorasick.Automaton | None:
    """One Aho-Corasick automaton of ``values`` (value -> kind), None when there are none.

    A session sees thousands of secrets and writes tens of megabytes of logs: one pass
    over each file for all values at once, instead of one ``in`` or regex search per value
    and file, keeps the scan at a few seconds instead of a minute.
    """
    if not values:
        return None
    automaton = ahocorasick.Automaton()
    for value, kind in values.items():
        automaton.add_word(value, (value, kind))
    automaton.make_automaton()
    return automaton


def _inside_a_word(char: str) -> bool:
    """What the regex ``[\\w-]`` matches: a letter, digit or underscore (Unicode), or a hyphen."""
    return char.isalnum() or char in "_-"


def _kinds_in(
    text: str, automaton: ahocorasick.Automaton | None, *, whole_words: bool = False
) -> set[str]:
    """The kinds of the values found in ``text`` (anywhere; or, ``whole_words``, only
    where neither neighbour is a letter, digit, underscore or hyphen)."""
    kinds: set[str] = set()
    if automaton is None:
        return kinds
    for end, (value, kind) in automaton.iter(text):
        if whole_words:
            start = end - len(value) + 1
            if (start > 0 and _inside_a_word(text[start - 1])) or (
                end + 1 < len(text) and _inside_a_word(text[end + 1])
            ):
                continue
        kinds.add(kind)
    return kinds


_current: Ledger | None = None


def saw(*values: object, kind: str = "secret") -> None:
    """Report secrets a test or helper handled (ignored outside a scanning session)."""
    if _current is not None:
        _current.add(*values, kind=kind)


def wrote(*paths: Path) -> None:
    """Report files a process of ours writes (they need not exist yet)."""
    if _current is not None:
        _current.files.update(Path(p).resolve() for p in paths)


def hub_wrote(*paths: Path) -> None:
    """Report files a hub writes: no secret and no patient's name or birth date."""
    if _current is not None:
        _current.hub_files.update(Path(p).resolve() for p in paths)


def wrote_sandbox(data_dir: Path, log_path: Path) -> None:
    """Report a sandbox: its log is searched, and its patients are looked for."""
    if _current is not None:
        _current.files.add(log_path.resolve())
        _current.sandbox_stores.add((data_dir / "fhir.sqlite").resolve())


@contextmanager
def scanning() -> Iterator[Ledger]:
    """Collect into a new ledger until the block ends."""
    global _current
    previous, _current = _current, Ledger()
    try:
        yield _current
    finally:
        _current = previous


def report(leaks: Iterable[str]) -> str:
    return "secrets found in files the session's hubs and sandboxes wrote:\n" + "\n".join(leaks)


@pytest.fixture(scope="session", autouse=True)
def secret_scan() -> Iterator[Ledger]:
    """Scan, at the end of the session, every file reported by :func:`wrote` for every secret."""
    with scanning() as ledger:
        yield ledger
    leaks = ledger.leaks()
    if leaks:
        pytest.fail(report(leaks), pytrace=False)
