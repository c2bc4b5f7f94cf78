"""The proxy's rules on their own: paths, interactions and scopes, header lists, rewriting, counting.

Pure functions, checked with the inputs an attacker or a server would send;
the same rules are exercised over HTTP in test_security.py.
"""

from __future__ import annotations

import random

import orjson
import pytest

from jupyterhub_smart.proxy.access import check_scopes, classify
from jupyterhub_smart.proxy.errors import ProxyError
from jupyterhub_smart.proxy.headers import request_headers, response_headers
from jupyterhub_smart.proxy.paths import parse_target
from jupyterhub_smart.proxy.rewrite import BodyRewriter, rewrite_text
from jupyterhub_smart.proxy.scan import BodyScanner
from jupyterhub_smart.smart.issuer_key import issuer_key, issuer_keys

PREFIX = "/services/smart-fhir/"
KEY = "ehr-example-org-fhir"


@pytest.mark.parametrize(
    "path",
    [
        "Patient/../Observation",
        "Patient/..;/admin",
        "Patient/..;jsessionid=x/admin",
        "Patient/%2e%2e/admin",
        "Patient%2f..%2fadmin",
        "Patient/%252e%252e/admin",
        "Patient\\..\\admin",
        "Patient//1",
        "Patient/./1",
        "Patient/1%00",
        "Patient/1/",
        "..",
    ],
)
def test_path_escapes_are_refused(path: str) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_target(f"{PREFIX}{KEY}/{path}", PREFIX)
    assert caught.value.status == 400
    assert len(path) < 4 or path not in caught.value.message  # the target is never echoed


@pytest.mark.parametrize(
    "uri",
    ["http://evil.example/services/smart-fhir/k/Patient", "evil.example:443", "*"],
)
def test_absolute_and_authority_form_targets_are_refused(uri: str) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_target(uri, PREFIX)
    assert caught.value.status == 400


def test_query_with_raw_spaces_or_quotes_is_refused_and_a_good_one_kept() -> None:
    with pytest.raises(ProxyError):
        parse_target(f"{PREFIX}{KEY}/Observation?code=a b", PREFIX)
    target = parse_target(f"{PREFIX}{KEY}/Observation?code=http%3A%2F%2Floinc.org%7C8867-4", PREFIX)
    assert target is not None
    assert target.segments == ("Observation",)
    assert target.query == "code=http%3A%2F%2Floinc.org%7C8867-4"


@pytest.mark.parametrize(
    ("method", "path", "interaction", "needs"),
    [
        ("GET", "Observation", "search-type", "s"),
        ("POST", "Observation/_search", "search-type", "s"),
        ("GET", "Patient/123", "read", "r"),
        ("GET", "Patient/123/_history/2", "vread", "r"),
        ("GET", "Patient/123/_history", "history-instance", "r"),
        ("GET", "Patient/_history", "history-type", "s"),
        ("POST", "Observation", "create", "c"),
        ("PUT", "Observation/1", "update", "u"),
        ("PATCH", "Observation/1", "patch", "u"),
        ("DELETE", "Observation/1", "delete", "d"),
        ("GET", "metadata", "capabilities", ""),
        ("GET", "Patient/1/$everything", "operation", "rs"),
        ("POST", "Patient/$export", "operation", "rs"),
        ("GET", "$export-status/abc", "operation", "rs"),
        ("POST", "Observation/$custom-write", "operation", "u"),
    ],
)
def test_requests_are_classified(method: str, path: str, interaction: str, needs: str) -> None:
    request = classify(method, tuple(path.split("/")), "")
    assert (request.interaction, request.needs) == (interaction, needs)


def test_batch_and_odd_methods_are_refused() -> None:
    with pytest.raises(ProxyError) as batch:
        classify("POST", (), "")
    assert batch.value.status == 405
    with pytest.raises(ProxyError) as put_type:
        classify("PUT", ("Observation",), "")
    assert put_type.value.status == 405
    with pytest.raises(ProxyError) as not_fhir:
        classify("GET", ("observation",), "")
    assert not_fhir.value.status == 404


@pytest.mark.parametrize(
    ("granted", "method", "path", "query", "allowed"),
    [
        (["patient/*.rs"], "GET", "Observation", "", True),
        (["patient/*.rs"], "POST", "Observation", "", False),
        (["patient/*.read"], "GET", "Patient/1", "", True),
        (["patient/*.read"], "DELETE", "Patient/1", "", False),
        (["user/Observation.cruds"], "DELETE", "Observation/1", "", True),
        (["patient/Observation.rs"], "GET", "Condition", "", False),
        (["patient/Observation.rs?category=laboratory"], "GET", "Observation", "", False),
        (
            ["patient/Observation.rs?category=laboratory"],
            "GET",
            "Observation",
            "category=laboratory",
            True,
        ),
        (
            [
                "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
            ],
            "GET",
            "Observation",
            "category=laboratory",
            True,
        ),
        (
            ["patient/Observation.crus?category=laboratory"],
            "POST",
            "Observation",
            "category=laboratory",
            False,
        ),
        (["patient/*.rs"], "GET", "$export", "", True),
        ([], "GET", "metadata", "", True),
        (["openid", "fhirUser"], "GET", "Patient/1", "", False),
    ],
)
def test_scopes_decide(
    granted: list[str], method: str, path: str, query: str, allowed: bool
) -> None:
    request = classify(method, tuple(path.split("/")), query)
    if allowed:
        check_scopes(granted, request)
    else:
        with pytest.raises(ProxyError) as caught:
            check_scopes(granted, request)
        assert caught.value.status == 403
        assert caught.value.error == "insufficient_scope"


def test_request_headers_allow_list_drops_credentials_and_forwarding() -> None:
    sent = [
        ("Authorization", "Bearer stolen-ehr-token-0123456789"),
        ("Cookie", "jupyterhub-session-id=abc"),
        ("Host", "evil.example"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "evil.example"),
        ("Accept", "application/fhir+json"),
        ("Prefer", "return=minimal"),
        ("If-None-Match", 'W/"1"'),
    ]
    assert request_headers(sent) == {
        "accept": "application/fhir+json",
        "prefer": "return=minimal",
        "if-none-match": 'W/"1"',
    }


def test_response_headers_drop_cookies_and_authenticate_details() -> None:
    base, proxy = "https://ehr.example/fhir", "http://127.0.0.1:8765/services/smart-fhir/k"
    got = response_headers(
        [
            ("Set-Cookie", "ehr-session=1"),
            (
                "WWW-Authenticate",
                'Bearer error="invalid_token", error_description="token abc expired"',
            ),
            ("Location", f"{base}/Observation/1/_history/1"),
            ("Content-Type", "application/fhir+json"),
            ("Server", "EHR/1.0"),
        ],
        lambda text: rewrite_text(text, base, proxy),
    )
    assert got == [
        ("Location", f"{proxy}/Observation/1/_history/1"),
        ("Content-Type", "application/fhir+json"),
    ]


def _bundle(base: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": f"{base}/Observation?_page=2"}],
            "entry": [
                {
                    "fullUrl": f"{base}/Observation/o{i}",
                    "resource": {
                        "resourceType": "Observation",
                        "id": f"o{i}",
                        "subject": {"reference": f"Patient/p{i % 3}"},
                        "note": [{"text": f"{base}2 stays"}],
                    },
                }
                for i in range(n)
            ],
        }
    )


@pytest.mark.parametrize("seed", range(5))
def test_rewrite_and_scan_give_the_same_result_whatever_the_chunking(seed: int) -> None:
    base, proxy = "https://ehr.example/fhir", "http://127.0.0.1:9/services/smart-fhir/ehr"
    body = _bundle(base, 40)
    rng = random.Random(seed)
    rewriter, scanner = BodyRewriter(base, proxy), BodyScanner("application/fhir+json")
    out, pos = [], 0
    while pos < len(body):
        step = rng.choice([1, 2, 7, len(base) - 1, len(base), 300, 5000])
        chunk = body[pos : pos + step]
        pos += step
        scanner.feed(chunk)
        out.append(rewriter.feed(chunk))
    out.append(rewriter.finish())
    rewritten = b"".join(out)
    assert rewritten == body.replace(f"{base}/".encode(), f"{proxy}/".encode())
    assert f"{base}2 stays".encode() in rewritten
    assert scanner.finish() == 40
    assert scanner.patients == {"p0", "p1", "p2"}


def test_scan_counts_ndjson_lines_and_patient_resources() -> None:
    lines = [
        orjson.dumps({"resourceType": "Patient", "id": f"p{i}", "name": [{"family": "X"}]})
        for i in range(5)
    ]
    scanner = BodyScanner("application/fhir+ndjson")
    body = b"\n".join(lines)  # no final newline: the last line still counts
    for i in range(0, len(body), 13):
        scanner.feed(body[i : i + 13])
    assert scanner.finish() == 5
    assert scanner.patients == {f"p{i}" for i in range(5)}


def test_issuer_keys_are_readable_and_distinct() -> None:
    assert issuer_key("https://EHR.example.org:8443/r4/fhir") == "ehr-example-org-8443-r4-fhir"
    with pytest.raises(ValueError, match="alike"):
        issuer_keys(["https://ehr.example/r4", "https://ehr.example/R4"])


def test_scan_reads_pretty_printed_json_too() -> None:
    """A server that indents its JSON: the regular-expression path counts the same."""
    base = "https://ehr.example/fhir"
    pretty = orjson.dumps(orjson.loads(_bundle(base, 12)), option=orjson.OPT_INDENT_2)
    patient = orjson.dumps({"resourceType": "Patient", "id": "p9"}, option=orjson.OPT_INDENT_2)
    for body, count, patients in ((pretty, 12, {"p0", "p1", "p2"}), (patient, 1, {"p9"})):
        scanner = BodyScanner("application/fhir+json")
        for i in range(0, len(body), 100):
            scanner.feed(body[i : i + 100])
        assert scanner.finish() == count
        assert scanner.patients == patients
