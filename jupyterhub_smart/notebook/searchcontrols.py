"""Search control and advanced parameters, checked before any request.

A misspelt modifier (``code:txt``), a ``_summary`` the spec does not have, a
malformed chain or ``_has`` would otherwise reach the server, which may ignore
it silently (many do) and return far more than asked. Here each is a
``ValueError`` saying what is wrong, before anything is sent.

Keyword arguments of ``search()`` that FHIR spells with a leading underscore
(``_sort``, ``_elements``, ``_summary``, ``_lastUpdated``) are accepted as they
are; ``include=``/``revinclude=`` (and their ``_iterate`` forms) become
``_include``/``_revinclude`` parameters. A list for ``_lastUpdated`` is a
range (each value its own parameter: ``ge2025-01-01`` AND ``lt2025-02-01``),
where a list for other parameters is FHIR's OR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime

__all__ = ["check_params", "include_params", "range_params"]

#: Modifiers FHIR R4 defines (§3.1.1.5.5), and ``iterate`` for includes.
MODIFIERS = frozenset(
    {
        "missing", "exact", "contains", "text", "not", "above", "below", "in", "not-in",
        "of-type", "identifier", "iterate", "code-text", "text-advanced",
    }
)  # fmt: skip
SUMMARY = ("true", "false", "text", "data", "count")
_NAME = r"[a-z_][A-Za-z0-9_\-]*"
_TYPE = r"[A-Z][A-Za-z]+"
_PLAIN = re.compile(rf"^{_NAME}$")
_CHAIN = re.compile(rf"^{_NAME}(?::{_TYPE})?\.{_NAME}(?::[a-z\-]+)?$")
_HAS = re.compile(rf"^_has:{_TYPE}:{_NAME}:(?:{_NAME}|_has:.+)$")
_INCLUDE = re.compile(rf"^{_TYPE}:{_NAME}(?::{_TYPE})?$")
_SORT = re.compile(rf"^-?{_NAME}$")
_ELEMENT = re.compile(r"^[a-z][A-Za-z0-9]*$")
_DATE = re.compile(
    r"^(eq|ne|gt|lt|ge|le|sa|eb)?\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?)?)?$"
)


def _check_name(name: str) -> None:
    if name.startswith("_has:"):
        if not _HAS.match(name):
            raise ValueError(
                f"{name!r}: write _has:<Type>:<reference parameter>:<parameter>, e.g. "
                "_has:Observation:patient:code"
            )
        return
    if "." in name:
        if not _CHAIN.match(name):
            raise ValueError(
                f"{name!r}: a chained parameter is <reference>[:<Type>].<parameter>, e.g. "
                "patient.name or subject:Patient.family"
            )
        return
    base, _, modifier = name.partition(":")
    if modifier and modifier not in MODIFIERS and not re.fullmatch(_TYPE, modifier):
        raise ValueError(
            f"{name!r}: unknown modifier ':{modifier}'; FHIR's are "
            f"{', '.join(sorted(MODIFIERS))} or a resource type (subject:Patient)"
        )
    if not _PLAIN.match(base):
        raise ValueError(f"{name!r} is not a search parameter name")


def check_params(pairs: Sequence[tuple[str, str]]) -> None:
    """Raise ``ValueError`` for a malformed name, modifier or control value."""
    for name, value in pairs:
        _check_name(name)
        if name == "_summary" and value not in SUMMARY:
            raise ValueError(f"_summary={value!r}: use one of {', '.join(SUMMARY)}")
        if name == "_sort":
            bad = [v for v in value.split(",") if not _SORT.match(v)]
            if bad:
                raise ValueError(
                    f"_sort={value!r}: each key is a parameter name, '-' first for descending"
                )
        if name == "_elements":
            bad = [v for v in value.split(",") if not _ELEMENT.match(v)]
            if bad:
                raise ValueError(
                    f"_elements={value!r}: top-level element names (code,subject), not {bad[:3]}"
                )
        if name in ("_lastUpdated", "_since") and not _DATE.match(value):
            raise ValueError(
                f"{name}={value!r}: a FHIR date with an optional prefix (ge2025-01-01, "
                "lt2025-06-01T00:00:00Z); a time needs a timezone"
            )
        if name.split(":")[0] in ("_include", "_revinclude"):
            if not _INCLUDE.match(value):
                raise ValueError(
                    f"{name}={value!r}: write <Type>:<parameter>[:<TargetType>], e.g. Observation:encounter"
                )
            if name.partition(":")[2] not in ("", "iterate"):
                raise ValueError(f"{name}: only the :iterate modifier exists for includes")


def _text(value: object) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"{value!r} has no timezone: FHIR needs one with a time (e.g. tzinfo=UTC)"
            )
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def range_params(name: str, value: object) -> list[tuple[str, str]]:
    """``_lastUpdated=[a, b]`` as two parameters (a range), a single value as one."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [(name, _text(v)) for v in values]


def include_params(
    include: Iterable[str] | None,
    revinclude: Iterable[str] | None,
    include_iterate: Iterable[str] | None = None,
    revinclude_iterate: Iterable[str] | None = None,
) -> list[tuple[str, str]]:
    """The ``_include``/``_revinclude`` parameters of ``search(include=..., revinclude=...)``."""
    pairs: list[tuple[str, str]] = []
    for name, values in (
        ("_include", include),
        ("_revinclude", revinclude),
        ("_include:iterate", include_iterate),
        ("_revinclude:iterate", revinclude_iterate),
    ):
        if values is None:
            continue
        if isinstance(values, str):
            values = [values]
        pairs.extend((name, str(v)) for v in values)
    return pairs
