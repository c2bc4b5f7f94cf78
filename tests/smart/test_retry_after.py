"""One reading of ``Retry-After`` for the notebook, Bulk Data and token API clients."""

from __future__ import annotations

import email.utils

import pytest

from jupyterhub_smart.bulk.retry import MIN_WAIT, retry_after
from jupyterhub_smart.smart.retry_after import retry_after_seconds

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 600, usegmt=True), 600.0),
        (email.utils.formatdate(NOW - 600, usegmt=True), 0.0),
        # An HTTP-date is GMT even when written with a "-0000" zone that parses naive.
        (email.utils.formatdate(NOW + 30).rsplit(" ", 1)[0] + " -0000", 30.0),
    ],
)
def test_both_forms_are_read(value: str, seconds: float) -> None:
    assert retry_after_seconds(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "١٢", "Mon, 99 Foo 2026"])
def test_anything_else_is_none_so_the_caller_backs_off(value: str | None) -> None:
    assert retry_after_seconds(value, NOW) is None


def test_bulk_polls_never_faster_than_its_floor() -> None:
    assert retry_after("0", now=NOW) == MIN_WAIT
    assert retry_after("600", now=NOW) == 600.0
    assert retry_after("soon", now=NOW) is None
