"""Search over HTTP against a real sandbox process: one test per parameter and rule.

Expected results are computed in Python from the full resource lists, so a
search that returns too much or too little fails.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from leak_scan import Ledger
from sandbox_process import SandboxProcess

from .helpers import audit_event, fhir_get, ids, outcome_text, search, search_all

LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def patients(http: httpx.Client, system_token: dict[str, Any]) -> list[dict[str, Any]]:
    return search_all(http, "Patient", system_token)


@pytest.fixture(scope="module")
def observations_p1(http: httpx.Client, system_token: dict[str, Any]) -> list[dict[str, Any]]:
    return search_all(
        http, "Observation", system_token, {"patient": "patient-00001", "_count": 1000}
    )


def codes(resource: dict[str, Any], element: str = "code") -> set[str]:
    value = resource.get(element)
    concepts = value if isinstance(value, list) else [value]
    return {c["code"] for concept in concepts if concept for c in concept.get("coding", [])}


def test_all_patients_are_listed(patients: list[dict[str, Any]]) -> None:
    assert ids(patients) == [f"patient-{i:05d}" for i in range(1, 7)]


def test_patient_id(http: httpx.Client, system_token: dict[str, Any]) -> None:
    bundle = search(http, "Patient", system_token, {"_id": "patient-00003,patient-00005"})
    assert sorted(ids([e["resource"] for e in bundle["entry"]])) == [
        "patient-00003",
        "patient-00005",
    ]
    entry = bundle["entry"][0]
    assert entry["fullUrl"].endswith(f"/fhir/Patient/{entry['resource']['id']}")
    assert entry["fullUrl"].startswith("http://127.0.0.1:")


def test_patient_family_name_given(
    http: httpx.Client, system_token: dict[str, Any], patients: list[dict[str, Any]]
) -> None:
    target = patients[2]
    family = target["name"][0]["family"]
    given = target["name"][0]["given"][0]
    prefix = family[:3].lower()
    expected_family = {
        p["id"] for p in patients if p["name"][0]["family"].lower().startswith(prefix)
    }
    got = ids(search_all(http, "Patient", system_token, {"family": prefix}))
    assert set(got) == expected_family and target["id"] in got
    expected_given = {
        p["id"]
        for p in patients
        if any(g.lower().startswith(given.lower()) for g in p["name"][0]["given"])
    }
    assert set(ids(search_all(http, "Patient", system_token, {"given": given}))) == expected_given
    # name matches any part: family or given.
    assert target["id"] in ids(search_all(http, "Patient", system_token, {"name": given.upper()}))
    assert target["id"] in ids(search_all(http, "Patient", system_token, {"name": family}))
    # :contains matches inside a part.
    assert target["id"] in ids(
        search_all(http, "Patient", system_token, {"family:contains": family[1:4]})
    )
    assert search_all(http, "Patient", system_token, {"family": "zzzzqq"}) == []


def test_patient_gender(
    http: httpx.Client, system_token: dict[str, Any], patients: list[dict[str, Any]]
) -> None:
    for gender in ("female", "male"):
        expected = {p["id"] for p in patients if p["gender"] == gender}
        assert set(ids(search_all(http, "Patient", system_token, {"gender": gender}))) == expected


def test_patient_birthdate(
    http: httpx.Client, system_token: dict[str, Any], patients: list[dict[str, Any]]
) -> None:
    target = patients[0]
    birth = target["birthDate"]
    exact = ids(search_all(http, "Patient", system_token, {"birthdate": birth}))
    assert exact == [p["id"] for p in patients if p["birthDate"] == birth]
    year = birth[:4]
    assert set(ids(search_all(http, "Patient", system_token, {"birthdate": year}))) == {
        p["id"] for p in patients if p["birthDate"].startswith(year)
    }
    assert set(ids(search_all(http, "Patient", system_token, {"birthdate": f"ge{birth}"}))) == {
        p["id"] for p in patients if p["birthDate"] >= birth
    }
    assert set(ids(search_all(http, "Patient", system_token, {"birthdate": f"lt{birth}"}))) == {
        p["id"] for p in patients if p["birthDate"] < birth
    }


def test_patient_identifier(
    http: httpx.Client, system_token: dict[str, Any], patients: list[dict[str, Any]]
) -> None:
    target = patients[4]
    identifier = target["identifier"][0]
    system, value = identifier["system"], identifier["value"]
    assert ids(search_all(http, "Patient", system_token, {"identifier": f"{system}|{value}"})) == [
        target["id"]
    ]
    assert target["id"] in ids(search_all(http, "Patient", system_token, {"identifier": value}))
    assert (
        search_all(http, "Patient", system_token, {"identifier": f"http://other.example|{value}"})
        == []
    )
    # "|value" means "no system": the MRN has one.
    assert search_all(http, "Patient", system_token, {"identifier": f"|{value}"}) == []


def test_observation_patient_and_subject_forms(
    http: httpx.Client,
    system_token: dict[str, Any],
    observations_p1: list[dict[str, Any]],
    fhir_sandbox: SandboxProcess,
) -> None:
    assert observations_p1
    assert {o["subject"]["reference"] for o in observations_p1} == {"Patient/patient-00001"}
    expected = ids(observations_p1)
    for params in (
        {"subject": "Patient/patient-00001"},
        {"patient": "Patient/patient-00001"},
        {"subject": f"{fhir_sandbox.iss}/Patient/patient-00001"},
        {"subject:Patient": "patient-00001"},
    ):
        assert (
            ids(search_all(http, "Observation", system_token, {**params, "_count": 1000}))
            == expected
        )
    both = search(
        http,
        "Observation",
        system_token,
        {"patient": "patient-00001,patient-00002", "_summary": "count"},
    )
    one = search(
        http, "Observation", system_token, {"patient": "patient-00002", "_summary": "count"}
    )
    assert both["total"] == len(expected) + one["total"]
    # A reference to another server is refused rather than silently ignored.
    response = fhir_get(
        http, "Observation", system_token, {"subject": "https://elsewhere.example/fhir/Patient/1"}
    )
    assert response.status_code == 400
    assert "not on this server" in outcome_text(response)


def test_observation_code(
    http: httpx.Client, system_token: dict[str, Any], observations_p1: list[dict[str, Any]]
) -> None:
    heart = [o["id"] for o in observations_p1 if "8867-4" in codes(o)]
    assert heart
    base = {"patient": "patient-00001", "_count": 1000}
    assert ids(search_all(http, "Observation", system_token, {**base, "code": "8867-4"})) == heart
    assert (
        ids(search_all(http, "Observation", system_token, {**base, "code": f"{LOINC}|8867-4"}))
        == heart
    )
    assert (
        search_all(
            http, "Observation", system_token, {**base, "code": "http://snomed.info/sct|8867-4"}
        )
        == []
    )
    either = [o["id"] for o in observations_p1 if codes(o) & {"8867-4", "85354-9"}]
    assert (
        ids(search_all(http, "Observation", system_token, {**base, "code": "8867-4,85354-9"}))
        == either
    )
    # The blood pressure panel carries systolic and diastolic as components.
    panel = next(o for o in observations_p1 if "85354-9" in codes(o))
    assert [c["code"]["coding"][0]["code"] for c in panel["component"]] == ["8480-6", "8462-4"]
    assert {c["valueQuantity"]["code"] for c in panel["component"]} == {"mm[Hg]"}


def test_observation_category(
    http: httpx.Client, system_token: dict[str, Any], observations_p1: list[dict[str, Any]]
) -> None:
    base = {"patient": "patient-00001", "_count": 1000}
    for category in ("vital-signs", "laboratory"):
        expected = [o["id"] for o in observations_p1 if category in codes(o, "category")]
        assert expected
        got = search_all(http, "Observation", system_token, {**base, "category": category})
        assert ids(got) == expected


def test_observation_date_prefixes(
    http: httpx.Client, system_token: dict[str, Any], observations_p1: list[dict[str, Any]]
) -> None:
    from datetime import datetime

    def when(o: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(o["effectiveDateTime"])

    pivot = when(observations_p1[len(observations_p1) // 2])
    stamp = pivot.isoformat()
    base = {"patient": "patient-00001", "_count": 1000}
    cases = {
        f"ge{stamp}": lambda t: t >= pivot,
        f"gt{stamp}": lambda t: t > pivot,
        f"le{stamp}": lambda t: t <= pivot,
        f"lt{stamp}": lambda t: t < pivot,
        f"eq{stamp}": lambda t: t == pivot,
        stamp: lambda t: t == pivot,
        f"ne{stamp}": lambda t: t != pivot,
        f"sa{stamp}": lambda t: t > pivot,
        f"eb{stamp}": lambda t: t < pivot,
    }
    for value, predicate in cases.items():
        expected = {o["id"] for o in observations_p1 if predicate(when(o))}
        got = set(ids(search_all(http, "Observation", system_token, {**base, "date": value})))
        assert got == expected, value
    # A year is the whole year (in UTC); two date parameters are AND-ed into a range.
    year = pivot.year
    from datetime import timezone

    expected_year = {
        o["id"] for o in observations_p1 if when(o).astimezone(timezone.utc).year == year
    }
    assert (
        set(ids(search_all(http, "Observation", system_token, {**base, "date": str(year)})))
        == expected_year
    )
    ranged = search_all(
        http,
        "Observation",
        system_token,
        [
            ("patient", "patient-00001"),
            ("date", f"ge{year}-01-01"),
            ("date", f"lt{year + 1}-01-01"),
            ("_count", "1000"),
        ],
    )
    assert set(ids(ranged)) == expected_year


def test_observation_sort_by_date(http: httpx.Client, system_token: dict[str, Any]) -> None:
    from datetime import datetime

    base = {"patient": "patient-00001", "_count": 37}
    ascending = search_all(http, "Observation", system_token, {**base, "_sort": "date"})
    descending = search_all(http, "Observation", system_token, {**base, "_sort": "-date"})
    times = [datetime.fromisoformat(o["effectiveDateTime"]) for o in ascending]
    assert times == sorted(times)
    back = [datetime.fromisoformat(o["effectiveDateTime"]) for o in descending]
    assert back == sorted(back, reverse=True)
    assert sorted(ids(ascending)) == sorted(ids(descending))
    assert len(set(ids(ascending))) == len(ascending)


@pytest.mark.parametrize("resource_type", ["Condition", "Encounter", "MedicationRequest"])
def test_other_types_by_patient(
    http: httpx.Client, system_token: dict[str, Any], resource_type: str
) -> None:
    everything = search_all(http, resource_type, system_token, {"_count": 1000})
    assert everything, f"no {resource_type} generated"
    subjects = {r["subject"]["reference"].removeprefix("Patient/") for r in everything}
    for patient in sorted(subjects)[:2]:
        got = search_all(http, resource_type, system_token, {"patient": patient})
        assert ids(got) == [
            r["id"] for r in everything if r["subject"]["reference"] == f"Patient/{patient}"
        ]


def test_paging_visits_every_match_once(http: httpx.Client, system_token: dict[str, Any]) -> None:
    total = search(http, "Observation", system_token, {"_summary": "count"})["total"]
    assert total > 300
    pages = 0
    seen: list[str] = []
    bundle = search(http, "Observation", system_token, {"_count": 97})
    while True:
        pages += 1
        assert len(bundle.get("entry", [])) <= 97
        seen.extend(e["resource"]["id"] for e in bundle.get("entry", []))
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        assert "_count=97" in nxt[0]
        response = http.get(
            nxt[0], headers={"Authorization": f"Bearer {system_token['access_token']}"}
        )
        assert response.status_code == 200
        bundle = response.json()
    assert len(seen) == len(set(seen)) == total
    assert pages == -(-total // 97)
    single = search(http, "Observation", system_token, {"_count": 1000, "patient": "patient-00001"})
    assert not [link for link in single["link"] if link["relation"] == "next"]


def test_summary_count(
    http: httpx.Client, system_token: dict[str, Any], patients: list[dict[str, Any]]
) -> None:
    bundle = search(http, "Patient", system_token, {"_summary": "count"})
    assert bundle["total"] == len(patients)
    assert "entry" not in bundle
    zero = search(http, "Patient", system_token, {"_count": "0"})
    assert zero["total"] == len(patients) and "entry" not in zero


def test_count_is_capped(http: httpx.Client, system_token: dict[str, Any]) -> None:
    bundle = search(http, "Observation", system_token, {"_count": 5000})
    assert len(bundle["entry"]) == 1000
    assert [link for link in bundle["link"] if link["relation"] == "next"]


def test_post_search_equals_get(http: httpx.Client, system_token: dict[str, Any]) -> None:
    params = {"patient": "patient-00002", "code": "29463-7", "_sort": "date"}
    got = http.post(
        "/fhir/Observation/_search",
        data=params,
        headers={"Authorization": f"Bearer {system_token['access_token']}"},
    )
    assert got.status_code == 200, got.text
    assert ids([e["resource"] for e in got.json()["entry"]]) == ids(
        search_all(http, "Observation", system_token, params)
    )
    wrong = http.post(
        "/fhir/Observation/_search",
        json=params,
        headers={"Authorization": f"Bearer {system_token['access_token']}"},
    )
    assert wrong.status_code == 415
    assert "x-www-form-urlencoded" in outcome_text(wrong)


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("Observation", {"patinet": "patient-00001"}, "unknown search parameter 'patinet'"),
        ("Observation", {"code:text": "heart"}, "modifier ':text' is not supported"),
        ("Observation", {"code": ""}, "empty value"),
        ("Observation", {"code": "a,,b"}, "empty value between commas"),
        ("Observation", {"date": "2021-13-01"}, "not a real date"),
        ("Observation", {"date": "yesterday"}, "not a FHIR date"),
        ("Observation", {"date": "2021-03-04T10:00"}, "no timezone"),
        ("Observation", {"date": "ap2021"}, "unsupported date prefix"),
        ("Observation", {"_sort": "value"}, "_sort='value' is not supported"),
        ("Patient", {"_sort": "date"}, "cannot be sorted by date"),
        ("Observation", {"_count": "-1"}, "_count must be a whole number"),
        ("Observation", {"_count": "ten"}, "_count must be a whole number"),
        ("Observation", [("_count", "5"), ("_count", "6")], "_count may be given only once"),
        ("Observation", {"_summary": "short"}, "_summary='short' is not supported"),
        ("Observation", {"_cursor": "s1' OR 1=1"}, "follow the next link"),
        ("Observation", {"_cursor": "s9999999999999999999"}, "follow the next link"),
        ("Observation", {"_sort": "date", "_cursor": "s12"}, "follow the next link"),
        ("Observation", {"patient": "Practitioner/practitioner-1"}, "not a Patient reference"),
        ("Observation", {"patient": "patient 1;--"}, "not a valid resource id"),
        ("Observation", {"code": "a|b|c"}, "more than one unescaped '|'"),
        ("Patient", {"_id": "x" * 65}, "not a valid resource id"),
        ("Observation", {"code": "\\x"}, "backslash"),
        ("Observation", {"code": "x" * 2000}, "longer than"),
    ],
)
def test_bad_search_parameters_are_400(
    http: httpx.Client, system_token: dict[str, Any], path: str, params: Any, expected: str
) -> None:
    response = fhir_get(http, path, system_token, params)
    assert response.status_code == 400, response.text
    assert expected in outcome_text(response)


def test_access_token_in_url_is_refused_without_echo(
    http: httpx.Client, system_token: dict[str, Any]
) -> None:
    response = fhir_get(
        http, "Patient", system_token, {"access_token": system_token["access_token"]}
    )
    assert response.status_code == 400
    assert "Authorization header" in outcome_text(response)
    assert system_token["access_token"] not in response.text


def test_format_other_than_json_is_406(http: httpx.Client, system_token: dict[str, Any]) -> None:
    response = fhir_get(http, "Patient", system_token, {"_format": "xml"})
    assert response.status_code == 406
    assert "JSON only" in outcome_text(response)


def test_concurrent_searches_agree(
    fhir_sandbox: SandboxProcess, system_token: dict[str, Any]
) -> None:
    """Many clients at once (waitress serves from 8 threads, one SQLite connection each)."""
    from concurrent.futures import ThreadPoolExecutor

    def run(i: int) -> list[str]:
        with httpx.Client(base_url=fhir_sandbox.origin, timeout=60) as client:
            patient = f"patient-0000{i % 6 + 1}"
            return ids(
                search_all(client, "Observation", system_token, {"patient": patient, "_count": 40})
            )

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(run, range(24)))
    for i, result in enumerate(results):
        assert result and result == results[i % 6]


def _next_url(bundle: dict[str, Any]) -> str | None:
    urls = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    return urls[0] if urls else None


def test_next_links_stay_stable_while_resources_are_added(
    http: httpx.Client, secret_scan: Ledger
) -> None:
    """Keyset paging: an insert between pages neither repeats nor skips a match."""
    from .tokens import backend_token, bearer

    token = backend_token(http, "system/AuditEvent.c system/AuditEvent.rs")
    secret_scan.add(token["access_token"])

    def create() -> str:
        response = http.post("/fhir/AuditEvent", json=audit_event(), headers=bearer(token))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    for _ in range(5):
        create()
    before = ids(search_all(http, "AuditEvent", token, {"_count": 1000}))
    assert len(before) >= 5
    first = search(http, "AuditEvent", token, {"_count": 2})
    next_url = _next_url(first)
    assert next_url
    added = create()  # lands after every existing match
    second_once = http.get(next_url, headers=bearer(token)).json()
    second_again = http.get(next_url, headers=bearer(token)).json()
    assert ids([e["resource"] for e in second_once["entry"]]) == ids(
        [e["resource"] for e in second_again["entry"]]
    )
    seen = ids([e["resource"] for e in first["entry"]])
    bundle = second_once
    while True:
        seen.extend(e["resource"]["id"] for e in bundle.get("entry", []))
        url = _next_url(bundle)
        if url is None:
            break
        bundle = http.get(url, headers=bearer(token)).json()
    assert seen == [*before, added]


def test_sorted_next_link_gives_the_same_page_twice(
    http: httpx.Client, system_token: dict[str, Any]
) -> None:
    first = search(
        http,
        "Observation",
        system_token,
        {"patient": "patient-00001", "_sort": "-date", "_count": 7},
    )
    next_url = _next_url(first)
    assert next_url and "_cursor=" in next_url and "_sort=-date" in next_url
    headers = {"Authorization": f"Bearer {system_token['access_token']}"}
    pages = [http.get(next_url, headers=headers).json() for _ in range(2)]
    assert [e["resource"]["id"] for e in pages[0]["entry"]] == [
        e["resource"]["id"] for e in pages[1]["entry"]
    ]
    assert not set(ids([e["resource"] for e in first["entry"]])) & {
        e["resource"]["id"] for e in pages[0]["entry"]
    }


def test_condition_and_medication_request_code(
    http: httpx.Client, system_token: dict[str, Any]
) -> None:
    """The ``code`` parameter the CapabilityStatement advertises on these types really filters."""
    for resource_type, element in (
        ("Condition", "code"),
        ("MedicationRequest", "medicationCodeableConcept"),
    ):
        everything = search_all(http, resource_type, system_token, {"_count": 1000})
        wanted = sorted({c for r in everything for c in codes(r, element)})
        assert len(wanted) >= 2, f"the fixture needs two {resource_type} codes"
        for code in wanted[:2]:
            expected = [r["id"] for r in everything if code in codes(r, element)]
            got = search_all(http, resource_type, system_token, {"code": code, "_count": 1000})
            assert ids(got) == expected, (resource_type, code)
            system = everything[0][element]["coding"][0]["system"]
            with_system = {"code": f"{system}|{code}", "_count": 1000}
            assert ids(search_all(http, resource_type, system_token, with_system)) == expected


def test_encounter_date_and_sort(http: httpx.Client, system_token: dict[str, Any]) -> None:
    from datetime import datetime, timezone

    def period(e: dict[str, Any]) -> tuple[datetime, datetime]:
        return (
            datetime.fromisoformat(e["period"]["start"]).astimezone(timezone.utc),
            datetime.fromisoformat(e["period"]["end"]).astimezone(timezone.utc),
        )

    base = {"patient": "patient-00001", "_count": 1000}
    encounters = search_all(http, "Encounter", system_token, base)
    assert len(encounters) >= 2
    year = period(encounters[len(encounters) // 2])[0].year
    expected = [e["id"] for e in encounters if {t.year for t in period(e)} == {year}]
    got = search_all(http, "Encounter", system_token, {**base, "date": str(year)})
    assert ids(got) == expected and expected
    newest_first = search_all(http, "Encounter", system_token, {**base, "_sort": "-date"})
    starts = [period(e)[0] for e in newest_first]
    assert starts == sorted(starts, reverse=True)
    assert sorted(ids(newest_first)) == sorted(ids(encounters))


def test_practitioner_name_and_identifier(http: httpx.Client, system_token: dict[str, Any]) -> None:
    practitioners = search_all(http, "Practitioner", system_token)
    first = practitioners[0]
    family = first["name"][0]["family"]
    npi = first["identifier"][0]
    by_name = search_all(http, "Practitioner", system_token, {"name": family.lower()[:3]})
    assert first["id"] in ids(by_name)
    assert all(family.lower()[:3] in str(p["name"]).lower() for p in by_name)
    by_npi = search_all(
        http, "Practitioner", system_token, {"identifier": f"{npi['system']}|{npi['value']}"}
    )
    assert ids(by_npi) == [first["id"]]
