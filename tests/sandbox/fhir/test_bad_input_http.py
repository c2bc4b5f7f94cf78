"""Inputs a fuzz pass found or that sit on a boundary: each a clear 4xx, or a correct 200.

Found by fuzzing the running sandbox: ``_count=¹`` (``str.isdigit`` is true,
``int`` refuses it), ``date=le9999-12-31T23:59:59+14:00`` (its range ends
after ``datetime.max``) and percent-encoded bytes that are not UTF-8 (Werkzeug
silently searched for U+FFFD).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from leak_scan import Ledger

from .helpers import fhir_get, outcome_text, search


@pytest.mark.parametrize("value", ["\u00b9", "\u0663", "\uff15", "1e3", "+5", " 5", "0x10"])
def test_count_must_be_ascii_digits(
    http: httpx.Client, system_token: dict[str, Any], value: str
) -> None:
    response = fhir_get(http, "Observation", system_token, {"_count": value})
    assert response.status_code == 400, response.text
    assert "_count must be a whole number" in outcome_text(response)


@pytest.mark.parametrize(
    "value", ["\u0662\u0660\u0662\u0661", "2021-0\u0663", "\uff12\uff10\uff12\uff11"]
)
def test_dates_must_be_ascii_digits(
    http: httpx.Client, system_token: dict[str, Any], value: str
) -> None:
    response = fhir_get(http, "Observation", system_token, {"date": value})
    assert response.status_code == 400, response.text
    assert "is not a FHIR date" in outcome_text(response)


@pytest.mark.parametrize(
    ("value", "everything"),
    [
        ("le9999-12-31T23:59:59+14:00", True),
        ("le9999", True),
        ("lt9999-12", True),
        ("ge9999-12-31", False),
        ("ge0001-01-01T00:00:00-14:00", True),
        ("le0001", False),
    ],
)
def test_dates_at_the_ends_of_the_calendar(
    http: httpx.Client, system_token: dict[str, Any], value: str, everything: bool
) -> None:
    params = {"patient": "patient-00001", "_summary": "count"}
    total = search(http, "Observation", system_token, params)["total"]
    found = search(http, "Observation", system_token, {**params, "date": value})["total"]
    assert found == (total if everything else 0)


@pytest.mark.parametrize(
    "query", ["name=%FF%FE", "family=Sm%C3", "%FF=1", "_count=%C0%B5", "name=ok&given=%ED%A0%80"]
)
def test_query_that_is_not_utf8_is_400(
    http: httpx.Client, system_token: dict[str, Any], query: str
) -> None:
    response = http.get(
        f"/fhir/Patient?{query}",
        headers={"Authorization": f"Bearer {system_token['access_token']}"},
    )
    assert response.status_code == 400, response.text
    assert "not UTF-8" in outcome_text(response)


def test_utf8_query_still_works(http: httpx.Client, system_token: dict[str, Any]) -> None:
    """The check refuses only broken encodings: an accented name is searched as such."""
    response = http.get(
        "/fhir/Patient?name=Zo%C3%AB",
        headers={"Authorization": f"Bearer {system_token['access_token']}"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", [b"name=%FF", b"name=\xff\xfe", b"family=M%C3%BCller&given=%E9"])
def test_search_form_that_is_not_utf8_is_400(
    http: httpx.Client, system_token: dict[str, Any], body: bytes
) -> None:
    response = http.post(
        "/fhir/Patient/_search",
        content=body,
        headers={
            "Authorization": f"Bearer {system_token['access_token']}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 400, response.text
    assert "the form body is not UTF-8" in outcome_text(response)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 415),
        ("text/plain", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/x-www-form-urlencoded; charset=utf-16", 200),
    ],
)
def test_search_form_content_types(
    http: httpx.Client, system_token: dict[str, Any], content_type: str, status: int
) -> None:
    response = http.post(
        "/fhir/Patient/_search",
        content=b"_id=patient-00001",
        headers={
            "Authorization": f"Bearer {system_token['access_token']}",
            "Content-Type": content_type,
        },
    )
    assert response.status_code == status, response.text
    if status == 200:  # the charset parameter of a form is not used: forms are UTF-8
        assert [e["resource"]["id"] for e in response.json()["entry"]] == ["patient-00001"]
    else:
        assert "x-www-form-urlencoded" in outcome_text(response)


@pytest.mark.parametrize(
    "body",
    [b"[]", b"[{}]", b"null", b'"AuditEvent"', b"42", b"true", b"{}"],
)
def test_auditevent_that_is_not_an_object_or_lacks_its_type_is_400(
    http: httpx.Client, secret_scan: Ledger, body: bytes
) -> None:
    from .tokens import backend_token, bearer

    token = backend_token(http, "system/AuditEvent.c")
    secret_scan.add(token["access_token"])
    response = http.post(
        "/fhir/AuditEvent",
        content=body,
        headers={**bearer(token), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 400, response.text
    text = outcome_text(response)
    assert "must be a JSON object" in text or "resourceType must be 'AuditEvent'" in text


@pytest.mark.parametrize(
    "header",
    [
        "Bearer  x",
        "bearer",
        "Bearer a b",
        "Token abc",
        "Bearer\tabc",
        "Bearer abc, Bearer def",
    ],
)
def test_odd_authorization_headers_are_401(http: httpx.Client, header: str) -> None:
    response = http.get("/fhir/Patient", headers={"Authorization": header})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer ")
    outcome_text(response)
