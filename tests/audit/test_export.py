"""`audit export --format fhir`: a Bundle of AuditEvents that validates against R4 (fhir.resources)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event, token_fingerprint
from jupyterhub_smart.audit.events import HUB_ACTIONS
from jupyterhub_smart.cli import main

from .helpers import lines


def full_log(path: Path) -> None:
    """One event of every kind, with every optional field filled in."""
    salt = b"0123456789abcdef0123"
    with AuditLog(path, max_bytes=65536) as log:
        for action in HUB_ACTIONS:
            if action == "data-access":
                continue
            log.record_sync(
                hub_event(
                    action,
                    outcome="failure" if "fail" in action else "success",
                    description=f"{action} for the test",
                    username="alice",
                    fhir_user="https://ehr.example/fhir/Practitioner/7",
                    client_address="10.0.0.8",
                    user_agent="Mozilla/5.0",
                    issuer="https://ehr.example/fhir",
                    patient="p1",
                    encounter="Encounter/e1",
                    scopes_requested=["openid", "launch", "patient/*.rs"],
                    scopes_granted="openid launch patient/Observation.rs",  # type: ignore[arg-type]
                    token_hash=token_fingerprint("an-access-token", salt),
                    server_name="",
                )
            )
        log.record_sync(
            data_access_event(
                interaction="search-type",
                resource_type="Observation",
                search_params=["code", "date", "_count"],
                count=12,
                status=200,
                username="alice",
                patient="Patient/p1",
                server_name="gpu",
            )
        )
        log.record_sync(
            data_access_event(
                interaction="read", resource_type="Patient", resource_id="p1", status=404
            )
        )


def test_export_validates_against_r4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    full_log(path)
    out = tmp_path / "bundle.json"
    assert main(["audit", "export", "--format", "fhir", "--out", str(out), str(path)]) == 0
    data = orjson.loads(out.read_bytes())
    bundle = Bundle.model_validate(data)  # raises on anything R4B's model rejects
    assert bundle.type == "collection"
    resources = [e.resource for e in bundle.entry]
    assert len(resources) == len(HUB_ACTIONS) + 1
    assert all(r.__resource_type__ == "AuditEvent" for r in resources)
    first = data["entry"][0]["resource"]
    assert first["subtype"][0]["code"] == "launch-received"
    assert first["recorded"] and first["id"].endswith("-1")
    chain = {e["url"]: e for e in first["extension"][0]["extension"]}
    assert chain["seq"]["valueInteger"] == 1
    search = data["entry"][-2]["resource"]
    assert search["action"] == "E"
    # BALP's query entity has no detail: what it has no element for sits in an extension
    query = search["entity"][-1]
    assert query["role"]["code"] == "24" and "detail" not in query
    detail = {e["url"]: e["valueString"] for e in query["extension"][0]["extension"]}
    assert detail == {
        "interaction": "search-type",
        "search-parameter-names": "_count,code,date",
        "count": "12",
        "http-status": "200",
    }
    not_found = data["entry"][-1]["resource"]
    assert (
        not_found["outcome"] == "4" and not_found["entity"][-1]["what"]["reference"] == "Patient/p1"
    )
    assert "an-access-token" not in out.read_text()
    assert f"{len(resources)} AuditEvent resource(s) written" in capsys.readouterr().err


def test_export_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    full_log(path)
    assert main(["audit", "export", "--format", "fhir", str(path)]) == 0
    Bundle.model_validate(orjson.loads(capsys.readouterr().out))


def test_export_refuses_a_broken_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    full_log(path)
    data = lines(path)
    first = orjson.loads(data[0])["seq"]
    del data[2]
    path.write_bytes(b"".join(data))
    out = tmp_path / "bundle.json"
    assert main(["audit", "export", "--out", str(out), str(path)]) == 1
    assert f"does not verify: FAILED at seq {first + 2}: missing" in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.glob(".bundle.json.tmp-*")) == []


def test_deferred_record_exports(tmp_path: Path) -> None:
    from jupyterhub_smart.audit.chain import seal
    from jupyterhub_smart.audit.export import to_audit_event

    record, _ = seal(
        {
            **hub_event("logout", username="bob"),
            "deferred": {"since": "2026-01-01T00:00:00.000000+00:00", "error": "ENOSPC"},
            "log_id": "0" * 32,
            "seq": 7,
            "time": "2026-01-01T00:00:05.000000+00:00",
            "prev": "0" * 64,
        }
    )
    resource = to_audit_event(record)
    from fhir.resources.R4B.auditevent import AuditEvent

    AuditEvent.model_validate(resource)
    urls = [e["url"] for e in resource["extension"][0]["extension"]]
    assert "deferred-since" in urls and "deferred-error" in urls
