"""Helpers for the ViewDefinition tests: run a view, compare rows without regard to order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jupyterhub_smart import views


def _key(row: dict[str, Any]) -> str:
    return repr(sorted(row.items()))


class Rows(list):  # type: ignore[type-arg]
    """Rows that compare equal to another list of rows holding the same rows in any order."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, list):
            return NotImplemented
        return sorted(self, key=_key) == sorted(other, key=_key)

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture(params=["python", "auto"])
def rows(request: pytest.FixtureRequest) -> Callable[..., Rows]:
    """``rows(view, resources)``: the view's rows as dicts, equal to a list with them in any order.

    Run on each engine: ``auto`` is the Arrow engine wherever it covers the view.
    """

    def run(view: dict[str, Any], resources: list[dict[str, Any]]) -> Rows:
        table = views.run(view, resources, engine=request.param)
        return Rows(sorted(table.to_pylist(), key=_key))

    return run


@pytest.fixture
def same() -> Callable[[list[dict[str, Any]], list[dict[str, Any]]], bool]:
    """``same(got, expected)``: equal as multisets of rows."""

    def compare(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
        return sorted(got, key=_key) == sorted(expected, key=_key)

    return compare
