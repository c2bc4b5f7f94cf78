"""Versioned writes, history, ETags, transactions and batches over HTTP (own sandbox)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
from leak_scan import Ledger

from .ops_fixtures import A, B, entries, launched, observation, outcome, system

JSON = {"Content-Type": "application/fhir+json"}


def _create(
    http: httpx.Client, headers: dict[str, str], resource: dict[str, Any], **extra: str
) -> httpx.Response:
    return http.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers={**headers, **JSON, **extra}
    )


def test_capability_statement_declares_writes_history_and_operations(ops: httpx.Client) -> None:
    statement = ops.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    by_type = {r["type"]: r for r in rest["resource"]}
    observation_ = by_type["Observation"]
    assert {i["code"] for i in observation_["interaction"]} >= {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
    }
    assert observation_["versioning"] == "versioned-update" and observation_["readHistory"] is True
    assert "Observation:encounter" in observation_["searchInclude"]
    assert [o["name"] for o in observation_["operation"]] == ["lastn"]
    assert [o["name"] for o in by_type["Patient"]["operation"]] == ["everything"]
    assert "Observation:patient" in by_type["Patient"]["searchRevInclude"]
    assert [o["name"] for o in by_type["CodeSystem"]["operation"]] == ["lookup"]
    assert {i["code"] for i in by_type["AuditEvent"]["interaction"]} == {
        "read",
        "vread",
        "search-type",
        "history-instance",
        "history-type",
        "create",
    }


def test_create_read_etag_update_vread_history_delete(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan)
    created = _create(ops, writer, observation(A, id="ignored"))
    assert created.status_code == 201, created.text
    body = created.json()
    rid = body["id"]
    assert rid != "ignored" and body["meta"]["versionId"] == "1"
    assert created.headers["location"].endswith(f"/fhir/Observation/{rid}/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    read = ops.get(f"/fhir/Observation/{rid}", headers=writer)
    assert read.headers["etag"] == 'W/"1"' and "last-modified" in read.headers
    unchanged = ops.get(f"/fhir/Observation/{rid}", headers={**writer, "If-None-Match": 'W/"1"'})
    assert unchanged.status_code == 304 and unchanged.content == b""
    changed = {**body, "valueQuantity": {"value": 99, "unit": "beats/minute"}}
    stale = ops.put(
        f"/fhir/Observation/{rid}", json=changed, headers={**writer, **JSON, "If-Match": 'W/"7"'}
    )
    assert stale.status_code == 412 and "current version" in outcome(stale)
    updated = ops.put(
        f"/fhir/Observation/{rid}", json=changed, headers={**writer, **JSON, "If-Match": 'W/"1"'}
    )
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    again = ops.get(f"/fhir/Observation/{rid}", headers={**writer, "If-None-Match": 'W/"1"'})
    assert again.status_code == 200 and again.json()["valueQuantity"]["value"] == 99
    v1 = ops.get(f"/fhir/Observation/{rid}/_history/1", headers=writer)
    assert v1.status_code == 200 and v1.json()["valueQuantity"]["value"] == 70
    assert ops.get(f"/fhir/Observation/{rid}/_history/3", headers=writer).status_code == 404
    minimal = ops.put(
        f"/fhir/Observation/{rid}",
        json=changed,
        headers={**writer, **JSON, "Prefer": "return=minimal"},
    )
    assert (
        minimal.status_code == 200 and minimal.content == b"" and minimal.headers["etag"] == 'W/"3"'
    )
    deleted = ops.delete(f"/fhir/Observation/{rid}", headers=writer)
    assert deleted.status_code == 204
    gone = ops.get(f"/fhir/Observation/{rid}", headers=writer)
    assert gone.status_code == 410
    history = ops.get(f"/fhir/Observation/{rid}/_history", headers=writer).json()
    assert history["type"] == "history"
    methods = [e["request"]["method"] for e in history["entry"]]
    assert methods == ["DELETE", "PUT", "PUT", "POST"]
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']


def test_history_of_a_generated_resource_and_type_history_since(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan)
    generated = ops.get(f"/fhir/Condition/{A}-cond-1/_history", headers=writer)
    if generated.status_code == 404:  # this patient has no condition: use the Patient
        generated = ops.get(f"/fhir/Patient/{A}/_history", headers=writer)
    assert generated.status_code == 200
    assert [e["response"]["etag"] for e in generated.json()["entry"]] == ['W/"1"']
    before = ops.get(
        "/fhir/Observation/_history", headers=writer, params={"_since": "2030-01-01"}
    ).json()
    assert before["entry"] == []
    first = _create(ops, writer, observation(A)).json()
    second = _create(ops, writer, observation(A)).json()
    since = first["meta"]["lastUpdated"][:19] + "Z"
    recent = ops.get(
        "/fhir/Observation/_history", headers=writer, params={"_since": since, "_count": 1}
    ).json()
    assert [e["resource"]["id"] for e in recent["entry"]] == [second["id"]]
    next_url = next(link["url"] for link in recent["link"] if link["relation"] == "next")
    page2 = ops.get(next_url, headers=writer).json()
    assert first["id"] in [e["resource"]["id"] for e in page2["entry"]]


def test_conditional_create(ops: httpx.Client, secret_scan: Ledger) -> None:
    writer = system(ops, secret_scan)
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test", "value": "cond-1"}],
        "name": [{"family": "Conditional"}],
    }
    first = _create(ops, writer, resource, **{"If-None-Exist": "identifier=urn:test|cond-1"})
    assert first.status_code == 201
    second = _create(ops, writer, resource, **{"If-None-Exist": "identifier=urn:test|cond-1"})
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    found = ops.get("/fhir/Patient", headers=writer, params={"family": "conditional"}).json()
    assert len(entries(found)) == 1


def test_patch(ops: httpx.Client, secret_scan: Ledger) -> None:
    writer = system(ops, secret_scan)
    rid = _create(ops, writer, observation(A)).json()["id"]
    patch_headers = {**writer, "Content-Type": "application/json-patch+json"}
    ok = ops.patch(
        f"/fhir/Observation/{rid}",
        content=orjson.dumps([{"op": "replace", "path": "/status", "value": "amended"}]),
        headers={**patch_headers, "If-Match": 'W/"1"'},
    )
    assert ok.status_code == 200 and ok.json()["status"] == "amended"
    assert ok.json()["meta"]["versionId"] == "2"
    malformed = ops.patch(
        f"/fhir/Observation/{rid}", content=b'{"op": "replace"}', headers=patch_headers
    )
    assert malformed.status_code == 400 and "JSON Patch" in outcome(malformed)
    no_op = ops.patch(
        f"/fhir/Observation/{rid}",
        content=b'[{"op": "frobnicate", "path": "/status"}]',
        headers=patch_headers,
    )
    assert no_op.status_code == 400 and "malformed JSON Patch" in outcome(no_op)
    failing = ops.patch(
        f"/fhir/Observation/{rid}",
        content=orjson.dumps([{"op": "test", "path": "/status", "value": "final"}]),
        headers=patch_headers,
    )
    assert failing.status_code == 422
    id_change = ops.patch(
        f"/fhir/Observation/{rid}",
        content=orjson.dumps([{"op": "replace", "path": "/id", "value": "other"}]),
        headers=patch_headers,
    )
    assert id_change.status_code == 422 and "id" in outcome(id_change)
    not_json = ops.patch(f"/fhir/Observation/{rid}", content=b"[", headers=patch_headers)
    assert not_json.status_code == 400
    wrong_type = ops.patch(f"/fhir/Observation/{rid}", content=b"[]", headers={**writer, **JSON})
    assert wrong_type.status_code == 415


def test_bad_writes(ops: httpx.Client, secret_scan: Ledger) -> None:
    writer = system(ops, secret_scan)
    missing = _create(ops, writer, {"resourceType": "Observation", "status": "final"})
    assert missing.status_code == 422 and "code" in outcome(missing)
    wrong_type = ops.post(
        "/fhir/Observation", json={"resourceType": "Patient"}, headers={**writer, **JSON}
    )
    assert wrong_type.status_code == 400
    id_mismatch = ops.put(
        f"/fhir/Patient/{A}", json={"resourceType": "Patient", "id": B}, headers={**writer, **JSON}
    )
    assert id_mismatch.status_code == 400
    unknown = ops.put(
        "/fhir/Patient/nobody",
        json={"resourceType": "Patient", "id": "nobody"},
        headers={**writer, **JSON},
    )
    assert unknown.status_code == 404
    bad_date = _create(ops, writer, observation(A, effectiveDateTime="yesterday"))
    assert bad_date.status_code == 400 and "effectiveDateTime" in outcome(bad_date)
    audit_change = ops.delete("/fhir/AuditEvent/x", headers=writer)
    assert audit_change.status_code == 405
    read_only = system(ops, secret_scan, "system/*.rs")
    refused = _create(ops, read_only, observation(A))
    assert refused.status_code == 403 and "system/Observation.c" in outcome(refused)


def test_transaction_applies_all_and_rewrites_references(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b2f3a0e-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "subject": {"reference": f"Patient/{A}"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "resource": observation(
                    A, encounter={"reference": "urn:uuid:0b2f3a0e-0000-4000-8000-000000000001"}
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = ops.post("/fhir", json=bundle, headers={**writer, **JSON})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201", "201"]
    encounter_location = result["entry"][0]["response"]["location"]
    observation_location = result["entry"][1]["response"]["location"]
    stored = ops.get("/fhir/" + observation_location.split("/_history")[0], headers=writer).json()
    assert stored["encounter"]["reference"] == encounter_location.split("/_history")[0]


def test_batch_answers_each_entry(ops: httpx.Client, secret_scan: Ledger) -> None:
    writer = system(ops, secret_scan)
    patch = base64.b64encode(
        orjson.dumps([{"op": "add", "path": "/active", "value": False}])
    ).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": observation(A), "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "DELETE", "url": "Observation/does-not-exist"}},
            {"request": {"method": "GET", "url": f"Patient/{A}"}},
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": patch,
                },
                "request": {"method": "PATCH", "url": f"Patient/{A}"},
            },
        ],
    }
    response = ops.post("/fhir", json=bundle, headers={**writer, **JSON})
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["201", "404", "200", "200"]
    assert response.json()["entry"][2]["resource"]["id"] == A


def test_ten_thousand_entry_transaction_is_413(ops: httpx.Client, secret_scan: Ledger) -> None:
    writer = system(ops, secret_scan)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Observation/x{i}"}} for i in range(10_000)
        ],
    }
    response = ops.post("/fhir", json=bundle, headers={**writer, **JSON})
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/fhir+json")


def test_bad_bundles(ops: httpx.Client, secret_scan: Ledger) -> None:
    writer = system(ops, secret_scan)
    for body, status in [
        ({"resourceType": "Bundle", "type": "collection"}, 400),
        ({"resourceType": "Patient"}, 400),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "PUT", "url": "Observation"}}],
            },
            400,
        ),
        ({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {}}]}, 400),
    ]:
        response = ops.post("/fhir", json=body, headers={**writer, **JSON})
        assert response.status_code == status, response.text
        assert outcome(response)


def test_patient_token_writes_only_in_its_compartment(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan)
    theirs = _create(ops, writer, observation(B)).json()["id"]
    mine_headers = launched(ops, secret_scan, "launch/patient patient/*.cruds")
    mine = _create(ops, mine_headers, observation(A))
    assert mine.status_code == 201
    other = _create(ops, mine_headers, observation(B))
    assert other.status_code == 403 and f"Patient/{A}" in outcome(other)
    naming = _create(ops, mine_headers, observation(A, performer=[{"reference": f"Patient/{B}"}]))
    assert naming.status_code == 403
    update_theirs = ops.put(
        f"/fhir/Observation/{theirs}",
        json={**observation(B), "id": theirs},
        headers={**mine_headers, **JSON},
    )
    assert update_theirs.status_code == 404
    move_mine = ops.put(
        f"/fhir/Observation/{mine.json()['id']}",
        json={**observation(B), "id": mine.json()["id"]},
        headers={**mine_headers, **JSON},
    )
    assert move_mine.status_code == 403
    assert ops.delete(f"/fhir/Observation/{theirs}", headers=mine_headers).status_code == 404
    assert ops.get(f"/fhir/Observation/{theirs}", headers=writer).status_code == 200


def test_v1_write_scope_and_read_only_scope(ops: httpx.Client, secret_scan: Ledger) -> None:
    v1 = launched(
        ops, secret_scan, "launch/patient patient/Observation.write patient/Observation.read"
    )
    assert _create(ops, v1, observation(A)).status_code == 201
    read_only = launched(ops, secret_scan, "launch/patient patient/Observation.read")
    refused = _create(ops, read_only, observation(A))
    assert refused.status_code == 403 and "patient/Observation.c" in outcome(refused)


def test_transaction_with_one_out_of_scope_entry_fails_whole(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan)
    mine_headers = launched(ops, secret_scan, "launch/patient patient/*.cruds")
    marker = "transaction-marker-1"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(A, identifier=[{"system": "urn:t", "value": marker}]),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": observation(B), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = ops.post("/fhir", json=bundle, headers={**mine_headers, **JSON})
    assert response.status_code == 403
    assert "entry[1] (POST Observation)" in outcome(response)
    written = ops.get("/fhir/Observation/_history", headers=writer, params={"_count": 1000}).json()
    assert not [
        e for e in written["entry"] if marker in str(e.get("resource", {}).get("identifier"))
    ]
    theirs = _create(ops, writer, observation(B)).json()["id"]
    touching = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Observation/{theirs}"}}],
    }
    hidden = ops.post("/fhir", json=touching, headers={**mine_headers, **JSON})
    assert hidden.status_code == 404 and "entry[0] (DELETE" in outcome(hidden)
    assert ops.get(f"/fhir/Observation/{theirs}", headers=writer).status_code == 200


def test_history_entries_are_filtered_by_compartment(
    ops: httpx.Client, secret_scan: Ledger
) -> None:
    writer = system(ops, secret_scan)
    theirs = _create(ops, writer, observation(B)).json()["id"]
    mine = _create(ops, writer, observation(A)).json()["id"]
    reader = launched(ops, secret_scan, "launch/patient patient/*.rs")
    listed = ops.get("/fhir/Observation/_history", headers=reader, params={"_count": 1000}).json()
    ids = {e["resource"]["id"] for e in listed["entry"] if "resource" in e}
    assert mine in ids and theirs not in ids
    assert all(
        e["resource"]["subject"]["reference"] == f"Patient/{A}"
        for e in listed["entry"]
        if "resource" in e
    )
    assert ops.get(f"/fhir/Observation/{theirs}/_history", headers=reader).status_code == 404
    assert ops.get(f"/fhir/Observation/{theirs}/_history/1", headers=reader).status_code == 404
    # a resource moved into another compartment keeps its earlier versions hidden from the new one
    moved = _create(ops, writer, observation(A)).json()
    ops.put(
        f"/fhir/Observation/{moved['id']}",
        json={**observation(B), "id": moved["id"]},
        headers={**writer, **JSON},
    )
    versions_seen = ops.get(f"/fhir/Observation/{moved['id']}/_history", headers=reader).json()
    assert [e["response"]["etag"] for e in versions_seen["entry"]] == ['W/"1"']
    assert ops.get(f"/fhir/Observation/{moved['id']}", headers=reader).status_code == 404
