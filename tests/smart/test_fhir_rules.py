"""The FHIR syntax rules every client-side module shares, and the two sides that use them.

The loopback table is checked against the hub (which issuers may use plain
http) and the notebook (where it sends a token over plain http) so the two
cannot disagree again.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import orjson
import pytest

from jupyterhub_smart.notebook import SMARTClient, StaticTokenProvider, UnsafeURL
from jupyterhub_smart.notebook.http import require_tls
from jupyterhub_smart.smart.fhir_rules import (
    Reference,
    is_fhir_id,
    is_loopback_host,
    is_resource_type,
    is_search_param_name,
    parse_reference,
    patient_id,
)
from jupyterhub_smart.smart.issuers import IssuerPolicy

ID_OK = ["a", "123", "p-1.2", "A" * 64, "a.b-C"]
ID_BAD = ["", "a" * 65, "a_b", "a b", "a/b", "..", ".", "p1\n", "é", None, 5]


@pytest.mark.parametrize("value", ID_OK)
def test_fhir_ids(value: str) -> None:
    assert is_fhir_id(value)


@pytest.mark.parametrize("value", ID_BAD)
def test_not_fhir_ids(value: object) -> None:
    assert not is_fhir_id(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Observation", True),
        ("Patient", True),
        ("MedicationRequest", True),
        ("O", False),  # a single letter is no resource type name
        ("observation", False),
        ("Observation1", False),
        ("Observation\n", False),
        ("X" * 65, False),
        ("", False),
        (None, False),
    ],
)
def test_resource_types(value: object, expected: bool) -> None:
    assert is_resource_type(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("code", True),
        ("_count", True),
        ("value-quantity", True),
        ("code:text", True),
        ("subject:Patient", True),
        ("subject.name", True),
        ("_has:Observation:patient:code", True),
        ("__x", False),
        ("code=8867-4", False),  # a value is not a name
        ("a b", False),
        ("1code", False),
        ("a" * 101, False),
        ("", False),
        (None, False),
    ],
)
def test_search_param_names(value: object, expected: bool) -> None:
    assert is_search_param_name(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Patient/123", Reference("Patient", "123")),
        ("Patient/123/_history/2", Reference("Patient", "123", "2")),
        (
            "https://ehr.example.org/fhir/Practitioner/p.1",
            Reference("Practitioner", "p.1", None, "https://ehr.example.org/fhir"),
        ),
        (
            "http://127.0.0.1:8700/r4/fhir/Patient/1/_history/3",
            Reference("Patient", "1", "3", "http://127.0.0.1:8700/r4/fhir"),
        ),
        (
            "https://ehr.example.org/Patient/1",
            Reference("Patient", "1", None, "https://ehr.example.org"),
        ),
        ("Patient", None),
        ("Patient/", None),
        ("patient/1", None),
        ("Patient/..", None),
        ("Patient/1/2", None),
        ("Patient/1/_history", None),
        ("Patient/1/_history/..", None),
        ("a/b/Patient/1", None),  # relative references are Type/id, nothing before
        ("/Patient/1", None),
        ("Patient/1?x=1", None),
        ("https://ehr.example.org/fhir/Patient/1#x", None),
        ("https://ehr.example.org/fhir/Patient/1/", None),
        ("ftp://ehr.example.org/fhir/Patient/1", None),
        ("https:///Patient/1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_reference(value: object, expected: Reference | None) -> None:
    assert parse_reference(value) == expected


def test_parse_reference_of_one_type() -> None:
    reference = parse_reference("Patient/1/_history/4", "Patient")
    assert reference is not None and reference.relative == "Patient/1"
    assert parse_reference("Group/1", "Patient") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("p1", "p1"), ("Patient/p1", "p1"), ("Group/p1", None), ("Patient/..", None), ("", None)],
)
def test_patient_id(value: str, expected: str | None) -> None:
    assert patient_id(value) == expected


LOOPBACK = [
    "localhost",
    "LocalHost",
    "127.0.0.1",
    "127.0.0.2",
    "127.255.255.254",
    "[::1]",
    "[::ffff:127.0.0.2]",
]
NOT_LOOPBACK = [
    "10.0.0.1",
    "ehr.example.org",
    "127.0.0.1.example.org",
    "localhost.example.org",
    "sandbox.localhost",  # reaches this machine only if the resolver says so
    "localhost.",
    "127.1",  # the short form is refused rather than guessed
    "0.0.0.0",  # noqa: S104
    "[::2]",
    "[::ffff:10.0.0.1]",
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(f"http://{host}:8700/fhir")


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(f"http://{host}:8700/fhir")


@pytest.mark.parametrize("host", LOOPBACK)
def test_both_sides_take_plain_http_on_loopback(host: str) -> None:
    base = f"http://{host}:8700/fhir"
    assert base in IssuerPolicy({base: {"client_id": "hub", "client_auth": "public"}})
    assert require_tls(base) == base


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_both_sides_refuse_plain_http_elsewhere(host: str) -> None:
    base = f"http://{host}:8700/fhir"
    with pytest.raises(ValueError, match="plain http"):
        IssuerPolicy({base: {"client_id": "hub", "client_auth": "public"}})
    with pytest.raises(UnsafeURL, match="over plain HTTP"):
        require_tls(base)
    assert require_tls(base, allow_http=True) == base


class _PatientServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = orjson.dumps({"resourceType": "Patient", "id": self.path.rsplit("/", 1)[-1]})
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_on_127_0_0_2() -> Iterator[str]:
    """A FHIR-ish server on 127.0.0.2: loopback, but not 127.0.0.1."""
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _PatientServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


def test_notebook_reads_over_plain_http_from_127_0_0_2(server_on_127_0_0_2: str) -> None:
    client = SMARTClient(
        StaticTokenProvider("a-token-for-a-local-server", server_on_127_0_0_2), check_scopes=False
    )
    try:
        assert client.read("Patient", "p1") == {"resourceType": "Patient", "id": "p1"}
    finally:
        client.close()
