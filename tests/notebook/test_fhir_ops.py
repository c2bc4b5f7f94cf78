"""The client's $everything, includes, search controls, history, writes, bundles,
terminology and capabilities against a real sandbox of its own (these tests write).

Requests are counted by a transport that forwards to the real sandbox (so
"refused locally" means: no request left the kernel). For the two cases the
sandbox cannot produce (a server without ``$lastn``, one without a terminology
service), the same forwarding transport removes those operations from the
server's CapabilityStatement on the way back: the data stays the real server's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import PUBLIC_CLIENT
from sandbox_process import SandboxProcess, run_sandbox

from jupyterhub_smart.audit import data_access_event
from jupyterhub_smart.notebook import (
    DataAccessEvent,
    FHIRError,
    OperationNotDeclared,
    ScopeNotGranted,
    TerminologyUnavailable,
    connect,
)
from jupyterhub_smart.notebook.reporting import to_report

from .sandbox_tokens import patient_login

A = "patient-00001"
B = "patient-00002"
VITALS = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult"


class Counting(httpx.HTTPTransport):
    """Forwards to the real server; counts requests; can hide declared operations."""

    def __init__(self, hide: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []
        self.hide = hide

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = super().handle_request(request)
        if not self.hide or not request.url.path.endswith("/metadata"):
            return response
        response.read()
        statement = orjson.loads(response.content)
        for resource in statement["rest"][0]["resource"]:
            resource["operation"] = [
                o for o in resource.get("operation", []) if o["name"] not in self.hide
            ]
        statement["rest"][0]["resource"] = [
            r
            for r in statement["rest"][0]["resource"]
            if r.get("operation") or r["type"] not in ("CodeSystem", "ValueSet")
        ]
        return httpx.Response(
            200, headers={"Content-Type": "application/fhir+json"}, content=orjson.dumps(statement)
        )

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path.split('/fhir', 1)[-1]}" for r in self.requests]


@pytest.fixture(scope="module")
def ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with run_sandbox(
        tmp_path_factory.mktemp("sandbox-ops-client"), [PUBLIC_CLIENT], patients=3, seed=5
    ) as process:
        yield process


def client(ehr: SandboxProcess, scope: str, patient: str | None = A, **kw: Any) -> Any:
    tokens = patient_login(ehr, scope=scope, patient=patient)
    return connect(ehr.iss, token_provider=lambda: tokens, **kw)


def writer(ehr: SandboxProcess, **kw: Any) -> Any:
    return client(ehr, "openid fhirUser user/*.cruds", patient=None, **kw)


def observation(patient: str, code: str = "8867-4", value: float = 70) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2025-06-29T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "beats/minute"},
    }


def test_everything_into_frames_through_the_views(ehr: SandboxProcess) -> None:
    events: list[DataAccessEvent] = []
    with client(
        ehr, "launch/patient openid fhirUser patient/*.rs", page_size=200, event_sink=events.append
    ) as fhir:
        frames = fhir.everything().to_frames()
        observations = fhir.search("Observation", patient=A).to_pandas()
    assert {"Patient", "Observation", "Encounter"} <= set(frames)
    assert list(frames["Patient"]["id"]) == [A]
    assert len(frames["Observation"]) == len(observations)
    assert list(frames["Observation"].columns) == [*observations.columns, "key"]
    assert set(frames["Observation"]["subject"]) == {f"Patient/{A}"}
    assert frames["Encounter"]["key"].str.startswith("Encounter/").all()
    pages = [e for e in events if e.action == "operation"]
    assert pages and sum(e.count for e in pages) == sum(
        len(f["id"].unique()) for f in frames.values()
    )
    with client(ehr, "launch/patient openid fhirUser patient/*.rs") as fhir:
        assert len(fhir.everything(types=["Observation"])) == len(observations["id"].unique())
        only = fhir.everything(types=["Condition", "Patient"]).to_frames()
        assert set(only) <= {"Condition", "Patient"}
        recent = fhir.everything(since="2030-01-01").to_frames()
        assert recent == {} or all(len(f) == 0 for f in recent.values())
        with pytest.raises(ScopeNotGranted, match="beyond the launched patient"):
            fhir.everything(patient=B)


def test_includes_stay_out_of_the_match_frame_and_join(ehr: SandboxProcess) -> None:
    with writer(ehr) as fhir:
        result = fhir.search("Observation", patient=A, _count=20, include=["Observation:encounter"])
        matches = result.to_pandas()
        frames = result.to_frames()
    assert set(matches["id"]) == set(frames["Observation"]["id"])
    assert set(frames) == {"Observation", "Encounter"}
    joined = frames["Observation"].merge(
        frames["Encounter"], left_on="encounter", right_on="key", suffixes=("", "_enc")
    )
    assert len(joined) == len(frames["Observation"])
    with writer(ehr) as fhir:
        patients = fhir.search("Patient", _id=A, revinclude=["Observation:patient"]).to_frames()
        assert list(patients["Patient"]["id"]) == [A] and len(patients["Observation"]) > 10


def test_bad_includes_and_search_controls_are_refused_before_sending(ehr: SandboxProcess) -> None:
    transport = Counting()
    with writer(ehr, transport=transport) as fhir:
        with pytest.raises(ValueError, match="unknown modifier ':txt'"):
            fhir.search("Observation", params={"code:txt": "heart"})
        with pytest.raises(ValueError, match="_summary"):
            fhir.search("Observation", _summary="short")
        with pytest.raises(ValueError, match="Type>:<parameter"):
            fhir.search("Observation", include=["encounter"])
        with pytest.raises(ValueError, match="_has:<Type>"):
            fhir.search("Patient", params={"_has:Observation": "x"})
        with pytest.raises(ValueError, match="timezone"):
            fhir.search("Observation", _lastUpdated="ge2025-01-01T10:00")
        assert transport.requests == []
        with pytest.raises(OperationNotDeclared, match="Observation:encounter") as info:
            fhir.search("Observation", include=["Observation:performer"])
        assert "Observation:patient" in info.value.declared
        assert transport.paths() == ["GET /metadata"]


def test_search_controls_reach_the_server(ehr: SandboxProcess) -> None:
    with writer(ehr) as fhir:
        newest = list(
            fhir.search("Observation", patient=A, code="8867-4", _sort="-date", _count=3)
        )[:3]
        assert [o["effectiveDateTime"] for o in newest] == sorted(
            (o["effectiveDateTime"] for o in newest), reverse=True
        )
        subset = next(
            iter(fhir.search("Observation", patient=A, _elements=["effectiveDateTime"], _count=1))
        )
        assert "valueQuantity" not in subset and subset["meta"]["tag"][-1]["code"] == "SUBSETTED"
        family = fhir.read("Patient", A)["name"][0]["family"]
        chained = fhir.search("Observation", params={"patient.family": family}, _count=5)
        assert f"Patient/{A}" in {o["subject"]["reference"] for o in chained}
        has = fhir.search("Patient", params={"_has:Observation:patient:code": "8867-4"})
        assert A in {p["id"] for p in has}
        created = fhir.create(observation(A))
        since = created["meta"]["lastUpdated"]
        recent = fhir.search("Observation", _lastUpdated=(f"ge{since}", "lt2100-01-01"))
        assert [o["id"] for o in recent] == [created["id"]]


def test_history_vread_and_a_reread_that_costs_one_304(ehr: SandboxProcess) -> None:
    transport = Counting()
    events: list[DataAccessEvent] = []
    with writer(ehr, transport=transport, event_sink=events.append) as fhir:
        created = fhir.create(observation(A, value=71))
        changed = fhir.update({**created, "valueQuantity": {"value": 72, "unit": "beats/minute"}})
        assert changed["meta"]["versionId"] == "2"
        history = fhir.history("Observation", created["id"])
        assert len(history) == 2
        changes = history.changes()
        assert list(changes["method"]) == ["PUT", "POST"] and list(changes["version"]) == ["2", "1"]
        frame = history.to_pandas()
        assert sorted(frame["value"]) == [71.0, 72.0]
        assert fhir.vread("Observation", created["id"], 1)["valueQuantity"]["value"] == 71
        typed = fhir.history("Observation", since=created["meta"]["lastUpdated"]).changes()
        assert created["id"] in set(typed["id"])
        first = fhir.read("Observation", created["id"])
        before = len(transport.requests)
        again = fhir.read("Observation", created["id"])
        assert again == first and len(transport.requests) == before + 1
        assert transport.requests[-1].headers["If-None-Match"] == 'W/"2"'
        assert events[-1].action == "read" and events[-1].status == 304
    assert {e.action for e in events} >= {
        "create",
        "update",
        "history-instance",
        "history-type",
        "vread",
    }


def test_writes_within_scope_and_their_audit_events(ehr: SandboxProcess) -> None:
    events: list[DataAccessEvent] = []
    transport = Counting()
    with client(
        ehr,
        "launch/patient openid fhirUser patient/*.cruds",
        transport=transport,
        event_sink=events.append,
    ) as fhir:
        mine = fhir.create(observation(A), prefer="minimal")
        assert set(mine) == {"resourceType", "id", "meta"} and mine["meta"]["versionId"] == "1"
        full = fhir.read("Observation", mine["id"])
        patched = fhir.patch(
            "Observation", mine["id"], [{"op": "replace", "path": "/status", "value": "amended"}]
        )
        assert patched["status"] == "amended"
        with pytest.raises(FHIRError) as stale:
            fhir.update(full)  # version 1, now stale: If-Match from meta.versionId
        assert (
            stale.value.status == 412 and stale.value.outcome["resourceType"] == "OperationOutcome"
        )
        sent = len(transport.requests)
        with pytest.raises(ScopeNotGranted, match="not the launched patient"):
            fhir.create(observation(B))
        with pytest.raises(ValueError, match="patch operation 0"):
            fhir.patch("Observation", mine["id"], [{"op": "frobnicate", "path": "/status"}])
        with pytest.raises(ValueError, match="JSON Pointer"):
            fhir.patch("Observation", mine["id"], [{"op": "remove", "path": "status"}])
        with pytest.raises(OperationNotDeclared, match="create") as undeclared:
            fhir.update({"resourceType": "AuditEvent", "id": "x"})
        assert "create" in undeclared.value.declared and "update" not in undeclared.value.declared
        assert len(transport.requests) == sent
        fhir.delete("Observation", mine["id"])
        with pytest.raises(FHIRError) as gone:
            fhir.read("Observation", mine["id"])
        assert gone.value.status == 410
    writes = [
        (e.action, e.status) for e in events if e.action in ("create", "update", "patch", "delete")
    ]
    assert writes == [("create", 201), ("patch", 200), ("update", 412), ("delete", 204)]
    for event in events:
        report = to_report(event)
        assert report is not None
        recorded = data_access_event(**report)
        assert recorded["outcome"] == ("4" if event.status >= 400 else "0")  # AuditEvent.outcome
    with (
        client(ehr, "launch/patient openid fhirUser patient/*.rs") as reader,
        pytest.raises(ScopeNotGranted, match=r"patient/Observation\.c"),
    ):
        reader.create(observation(A))
    with client(
        ehr, "launch/patient openid fhirUser patient/*.cruds", check_scopes=False
    ) as unchecked:
        with pytest.raises(FHIRError) as refused:
            unchecked.create(observation(B))
        assert refused.value.status == 403 and refused.value.outcome is not None


def test_transaction_and_batch(ehr: SandboxProcess) -> None:
    with writer(ehr) as fhir:
        result = fhir.transaction(
            [
                {
                    "fullUrl": "urn:uuid:7d1c8f3a-1111-4222-8333-444455556666",
                    "resource": {
                        "resourceType": "Encounter",
                        "status": "finished",
                        "class": {"code": "AMB"},
                        "subject": {"reference": f"Patient/{A}"},
                    },
                    "request": {"method": "POST", "url": "Encounter"},
                },
                {
                    "resource": {
                        **observation(A),
                        "encounter": {"reference": "urn:uuid:7d1c8f3a-1111-4222-8333-444455556666"},
                    },
                    "request": {"method": "POST", "url": "Observation"},
                },
            ]
        )
        assert result.ok and [e.status for e in result.entries] == [201, 201]
        batch = fhir.batch(
            [
                {"resource": observation(A), "request": {"method": "POST", "url": "Observation"}},
                {"request": {"method": "DELETE", "url": "Observation/not-there"}},
            ]
        )
        assert [e.status for e in batch.entries] == [201, 404]
        assert [i for i, _ in batch.failed] == [1] and batch.failed[0][1].outcome
    entries = [
        {"resource": observation(A), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(B), "request": {"method": "POST", "url": "Observation"}},
    ]
    with (
        client(ehr, "launch/patient openid fhirUser patient/*.cruds") as fhir,
        pytest.raises(ScopeNotGranted, match=r"entry 1 \(POST Observation\)"),
    ):
        fhir.transaction(entries)
    with client(ehr, "launch/patient openid fhirUser patient/*.cruds", check_scopes=False) as fhir:
        with pytest.raises(FHIRError, match=r"entry\[1\]") as whole:
            fhir.transaction(entries)
        assert whole.value.status == 403


def test_observations_lastn_uses_the_server_or_says_it_did_not(ehr: SandboxProcess) -> None:
    with client(ehr, "launch/patient openid fhirUser patient/*.rs") as fhir:
        server = fhir.observations(code=["8867-4", "29463-7"], lastn=2)
        served = sorted(o["id"] for o in server)
        assert server.meta == {"lastn": 2, "source": "server"} and len(server) == len(served)
    with client(
        ehr, "launch/patient openid fhirUser patient/*.rs", transport=Counting(hide=("lastn",))
    ) as fhir:
        local = fhir.observations(code=["8867-4", "29463-7"], lastn=2)
        frame = local.to_pandas()
        assert local.meta["source"] == "client" and "lastn" in local.meta["reason"]
        assert sorted(frame["id"].unique()) == served
        assert len(served) == 4


def test_terminology_cached_and_said_when_missing(ehr: SandboxProcess) -> None:
    transport = Counting()
    with writer(ehr, transport=transport) as fhir:
        looked = fhir.lookup("http://loinc.org", "8867-4")
        assert looked["display"] == "Heart rate" and looked["name"] == "LOINC"
        assert fhir.lookup("http://loinc.org", "8867-4") == looked
        codes = fhir.expand(VITALS, filter="blood")
        assert {c["code"] for c in codes} == {"85354-9", "8480-6", "8462-4"}
        fhir.expand(VITALS, filter="blood")
        assert transport.paths() == [
            "GET /metadata",
            "GET /CodeSystem/$lookup",
            "GET /ValueSet/$expand",
        ]
        with pytest.raises(FHIRError) as unknown:
            fhir.lookup("http://loinc.org", "0000-0")
        assert unknown.value.status == 404
    with (
        writer(ehr, transport=Counting(hide=("lookup", "expand"))) as fhir,
        pytest.raises(TerminologyUnavailable, match="no terminology service"),
    ):
        fhir.lookup("http://loinc.org", "8867-4")
