"""Unit tests of search parameter parsing (no server: parse_search and its helpers)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from jupyterhub_smart.sandbox.fhir.outcome import FHIRError
from jupyterhub_smart.sandbox.fhir.search import (
    MAX_COUNT,
    parse_date,
    parse_search,
    split_values,
)

BASE = "http://127.0.0.1:8700/fhir"


def ts(*args: int, tz: timezone = timezone.utc) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp())  # type: ignore[misc]


def test_split_values_honours_escapes() -> None:
    assert split_values("a,b") == ["a", "b"]
    assert split_values(r"a\,b,c") == ["a,b", "c"]
    assert split_values(r"x\\,y") == ["x\\", "y"]
    assert split_values(r"s\|c") == [r"s\|c"]  # kept escaped for the token splitter
    with pytest.raises(FHIRError, match="backslash"):
        split_values(r"a\b")


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2021", ts(2021, 1, 1), ts(2022, 1, 1)),
        ("2021-02", ts(2021, 2, 1), ts(2021, 3, 1)),
        ("2021-12", ts(2021, 12, 1), ts(2022, 1, 1)),
        ("2020-02-29", ts(2020, 2, 29), ts(2020, 3, 1)),
        ("2021-03-04T10:15Z", ts(2021, 3, 4, 10, 15), ts(2021, 3, 4, 10, 16)),
        ("2021-03-04T10:15:30+02:00", ts(2021, 3, 4, 8, 15, 30), ts(2021, 3, 4, 8, 15, 31)),
        ("2021-03-04T10:15:30.123-05:00", ts(2021, 3, 4, 15, 15, 30), ts(2021, 3, 4, 15, 15, 31)),
    ],
)
def test_parse_date_precision_is_a_range(text: str, start: int, end: int) -> None:
    assert parse_date(text) == (start, end)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2021-02-30", "not a real date"),
        ("21-02-03", "not a FHIR date"),
        ("2021-03-04T10:15", "no timezone"),
        ("2021-03-04T10:15+15:00", "impossible timezone"),
        ("2021-03-04 10:15Z", "not a FHIR date"),
        ("", "not a FHIR date"),
        ("2021-03-04T10:15:00 01:00", "send a positive timezone offset as %2B"),
    ],
)
def test_parse_date_refuses(text: str, message: str) -> None:
    with pytest.raises(FHIRError, match=message) as info:
        parse_date(text)
    assert info.value.status == 400


def test_controls_and_links() -> None:
    query = parse_search(
        "Observation",
        [
            ("patient", "p1"),
            ("code", "http://loinc.org|8867-4"),
            ("_count", "5"),
            ("_sort", "-date"),
        ],
        BASE,
    )
    assert query.count == 5 and query.sort == "-date" and not query.summary_count
    assert query.link(BASE) == (
        f"{BASE}/Observation?patient=p1&code=http%3A%2F%2Floinc.org%7C8867-4&_count=5&_sort=-date"
    )
    cursor = query.cursor_after(42, 1700000000)
    resumed = parse_search("Observation", [*query.link_params, ("_cursor", cursor)], BASE)
    assert resumed.cursor == (1700000000, 42)
    sql, args = resumed.page_sql()
    assert "(r.date_start, r.seq) < (?, ?)" in sql and "ORDER BY r.date_start DESC" in sql
    assert args[-1] == 6  # one more than _count, to know whether a next page exists


def test_count_is_capped_and_zero_means_count_only() -> None:
    assert parse_search("Patient", [("_count", "100000")], BASE).count == MAX_COUNT
    assert parse_search("Patient", [("_count", "0")], BASE).summary_count


def test_values_are_bound_never_spliced() -> None:
    evil = "x') OR 1=1 --"
    query = parse_search("Patient", [("name", evil), ("identifier", evil)], BASE)
    sql, args = query.page_sql()
    assert evil not in sql
    assert any(isinstance(a, str) and a.startswith("x') or 1=1") for a in args)


@pytest.mark.parametrize(
    ("resource_type", "params", "status", "message"),
    [
        ("Observation", [("foo", "1")], 400, "unknown search parameter 'foo'"),
        ("Observation", [("code.name", "x")], 400, "not a reference parameter"),
        ("Observation", [("subject.name.family", "x")], 400, "one level of chaining"),
        ("Patient", [("_has:Observation:code:code", "x")], 400, "_has works on Patient"),
        ("Observation", [("_include:recurse", "Observation:patient")], 400, ":iterate"),
        ("Observation", [("_elements", "code,Bad")], 400, "_elements"),
        ("Patient", [("name:exact", "x")], 400, "modifier ':exact'"),
        ("Observation", [("access_token", "abc")], 400, "Authorization header"),
        ("Observation", [("_format", "xml")], 406, "JSON only"),
        ("Specimen", [], 404, "not supported"),
        ("Observation", [("date", "ap2021")], 400, "unsupported date prefix"),
        ("Observation", [("_cursor", "d1.2")], 400, "follow the next link"),
        ("Observation", [("x", "1")] * 60, 400, "more than 50"),
        ("Observation", [("code", ",".join(["a"] * 101))], 400, "more than 100 values"),
    ],
)
def test_parse_search_refuses(
    resource_type: str, params: list[tuple[str, str]], status: int, message: str
) -> None:
    with pytest.raises(FHIRError, match=message) as info:
        parse_search(resource_type, params, BASE)
    assert info.value.status == status
    assert "abc" not in info.value.diagnostics or message != "Authorization header"


def test_escaped_bar_is_literal_outside_tokens() -> None:
    query = parse_search("Patient", [("family", r"o\|brien")], BASE)
    _, args = query.page_sql()
    assert "o|brien" in args
