"""The notebook client against a real sandbox EHR process over HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from conftest import PUBLIC_CLIENT, SYMMETRIC_CLIENT
from sandbox_process import SandboxProcess, run_sandbox

from jupyterhub_smart.notebook import (
    CallableTokenProvider,
    DataAccessEvent,
    FHIRError,
    ScopeNotGranted,
    connect,
    connect_async,
)

from .sandbox_tokens import SEEN_SECRETS, patient_login, system_token

PATIENT = "patient-00001"


def system_client(sandbox: SandboxProcess, **kw: Any) -> Any:
    return connect(sandbox.iss, token_provider=lambda: system_token(sandbox), **kw)


def patient_client(sandbox: SandboxProcess, patient: str = PATIENT, **kw: Any) -> Any:
    tokens = patient_login(sandbox, patient=patient)
    return connect(sandbox.iss, token_provider=lambda: tokens, **kw)


def test_read_and_context(sandbox: SandboxProcess) -> None:
    with patient_client(sandbox) as fhir:
        context = fhir.context
        assert context.patient == PATIENT
        assert context.fhir_base_url == sandbox.iss
        assert "patient/*.rs" in context.scopes
        assert context.need_patient_banner is True  # fhirUser rides in the id_token here
        assert fhir.patient["id"] == PATIENT
        assert fhir.read("Patient", PATIENT)["resourceType"] == "Patient"


def test_patient_banner(sandbox: SandboxProcess) -> None:
    with patient_client(sandbox) as fhir:
        patient = fhir.patient
        banner = fhir.patient_banner()
        html = banner._repr_html_()
        family = patient["name"][0]["family"]
        assert family in html and patient["birthDate"] in html
        assert banner.mrn and banner.mrn in html
        assert patient["gender"] in str(banner)


def test_paging_across_many_pages_equals_summary_count(sandbox: SandboxProcess) -> None:
    events: list[DataAccessEvent] = []
    with system_client(sandbox, page_size=7, event_sink=events.append) as fhir:
        result = fhir.search("Observation", patient=PATIENT)
        total = len(result)
        assert total > 100
        frame = result.to_pandas()
        assert len(frame["id"].unique()) == total
        pages = [e for e in events if e.action == "search"]
        assert len(pages) == -(-total // 7)
        assert sum(e.count for e in pages) == total
        assert all(e.url.startswith(sandbox.iss) and e.status == 200 for e in events)
        assert sum(1 for _ in fhir.search("Observation", patient=PATIENT, _count=50)) == total


def test_observations_time_series(sandbox: SandboxProcess) -> None:
    with patient_client(sandbox) as fhir:
        hr = fhir.observations(code="8867-4").to_pandas()
        assert len(hr) > 5
        assert set(hr["code"]) == {"8867-4"} and hr["value"].notna().all()
        assert hr["effective"].is_monotonic_increasing
        assert str(hr["effective"].dtype) == "datetime64[us, UTC]"
        assert set(hr["subject"]) == {f"Patient/{PATIENT}"}
        since = hr["effective"].iloc[len(hr) // 2].to_pydatetime()
        later = fhir.observations(code="8867-4", since=since).to_pandas()
        assert 0 < len(later) < len(hr) and (later["effective"] >= since).all()
        bp = fhir.observations(code="85354-9").to_pandas()
        assert set(bp["code"]) == {"8480-6", "8462-4"} and set(bp["panel_code"]) == {"85354-9"}
        both = fhir.observations(code=["8867-4", "29463-7"]).to_pandas()
        assert set(both["code"]) == {"8867-4", "29463-7"}
        assert fhir.observations(code="8867-4").to_arrow().num_rows == len(hr)


def test_other_resource_types(sandbox: SandboxProcess) -> None:
    with system_client(sandbox) as fhir:
        patients = fhir.search("Patient").to_pandas()
        assert len(patients) == 5 and patients["mrn"].notna().all()
        encounters = fhir.search("Encounter", patient=PATIENT).to_pandas()
        assert (encounters["end"] > encounters["start"]).all()
        assert len(fhir.search("Condition").to_pandas().columns) == 11


def test_real_404_and_400(sandbox: SandboxProcess) -> None:
    with system_client(sandbox) as fhir:
        with pytest.raises(FHIRError, match="Patient/nobody is not known") as info:
            fhir.read("Patient", "nobody")
        assert info.value.status == 404
        with pytest.raises(FHIRError, match="unknown search parameter 'colour'") as info:
            fhir.search("Observation", colour="red").to_pandas()
        assert info.value.status == 400


def test_real_403_with_operation_outcome(sandbox: SandboxProcess) -> None:
    tokens = patient_login(sandbox, scope="launch/patient openid patient/Patient.rs")
    with (
        connect(sandbox.iss, token_provider=lambda: tokens) as fhir,
        pytest.raises(ScopeNotGranted, match=r"granted patient/Patient\.rs"),
    ):
        fhir.search("Observation")
    events: list[DataAccessEvent] = []
    with connect(
        sandbox.iss, token_provider=lambda: tokens, check_scopes=False, event_sink=events.append
    ) as fhir:
        with pytest.raises(FHIRError, match="do not allow search of Observation") as info:
            fhir.search("Observation").to_pandas()
        assert info.value.status == 403 and info.value.diagnostics
    # the refused search is on the audit seam too, with its status
    assert [(e.action, e.resource_type, e.status, e.count) for e in events] == [
        ("search", "Observation", 403, 0)
    ]
    assert events[0].patient == tokens["patient"]


def test_restricted_scope_against_the_real_server(sandbox: SandboxProcess) -> None:
    lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    tokens = patient_login(sandbox, scope=f"launch/patient patient/Observation.rs?category={lab}")
    assert any("category" in s for s in tokens["scope"].split()), tokens["scope"]
    with connect(sandbox.iss, token_provider=lambda: tokens) as fhir:
        with pytest.raises(ScopeNotGranted):
            fhir.observations(code="8867-4")
        labs = fhir.observations(category="laboratory").to_pandas()
        assert set(labs["category"]) <= {"laboratory"}


def test_new_launch_for_another_patient_changes_the_context(sandbox: SandboxProcess) -> None:
    launches = [patient_login(sandbox, patient="patient-00001")]
    provider = CallableTokenProvider(lambda: launches[-1], sandbox.iss)
    with connect(token_provider=provider) as fhir:
        assert fhir.context.patient == "patient-00001"
        launches.append(patient_login(sandbox, patient="patient-00002"))
        provider.invalidate(launches[0]["access_token"])  # what expiry or a 401 would do
        assert fhir.context.patient == "patient-00002"
        assert fhir.patient["id"] == "patient-00002"


def test_threads_share_a_client_and_one_token_fetch(sandbox: SandboxProcess) -> None:
    calls: list[int] = []

    def mint() -> dict[str, Any]:
        calls.append(1)
        return system_token(sandbox)

    with connect(sandbox.iss, token_provider=mint) as fhir:
        calls.clear()
        fhir.provider.invalidate(fhir.provider.get().access_token)
        results: list[str] = []

        def work() -> None:
            results.append(fhir.read("Patient", PATIENT)["id"])

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [PATIENT] * 8 and len(calls) == 1


async def test_async_client(sandbox: SandboxProcess) -> None:
    tokens = patient_login(sandbox)
    async with connect_async(sandbox.iss, token_provider=lambda: tokens) as fhir:
        assert (await fhir.get_context()).patient == PATIENT
        reads = await asyncio.gather(*(fhir.read("Patient", PATIENT) for _ in range(10)))
        assert {r["id"] for r in reads} == {PATIENT}
        result = await fhir.observations(code="8867-4")
        frame = await result.to_pandas()
        assert len(frame) == await result.count()
        banner = await fhir.patient_banner()
        assert banner.patient_id == PATIENT


@pytest.mark.slow
def test_short_lived_tokens_never_fail_a_long_read(tmp_path: Path) -> None:
    """Tokens live 2 s; a loop reading for ~6 s with a minting provider never fails."""
    with run_sandbox(
        tmp_path, [PUBLIC_CLIENT, SYMMETRIC_CLIENT], extra_args=["--access-token-lifetime", "2"]
    ) as short:
        minted: list[str] = []

        def mint() -> dict[str, Any]:
            body = system_token(short)
            minted.append(body["access_token"])
            return body

        with connect(short.iss, token_provider=mint, page_size=50) as fhir:
            deadline = time.monotonic() + 6
            reads = 0
            while time.monotonic() < deadline:
                assert fhir.read("Patient", PATIENT)["id"] == PATIENT
                assert len(fhir.search("Observation", patient=PATIENT).to_pandas()) > 0
                reads += 1
        assert reads > 3
        assert len(set(minted)) >= 3  # the tokens really were replaced along the way
        log = short.log_text()
        assert not [s for s in SEEN_SECRETS if s in log]


def test_no_secret_in_the_sandbox_log(sandbox: SandboxProcess) -> None:
    log = sandbox.log_text()
    assert not [s[:6] for s in SEEN_SECRETS if s in log]


def test_frame_is_a_dataframe(sandbox: SandboxProcess) -> None:
    token = system_token(sandbox)["access_token"]
    with connect(sandbox.iss, token=token) as fhir:
        assert isinstance(fhir.search("Patient").to_pandas(), pd.DataFrame)
        with httpx.Client() as http:
            assert http.get(f"{sandbox.iss}/metadata").status_code == 200


def test_progress_bar_only_when_asked_outside_notebooks(
    sandbox: SandboxProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    with system_client(sandbox, page_size=20) as fhir:
        fhir.search("Observation", patient=PATIENT).to_pandas()
        assert "FHIR search" not in capsys.readouterr().err
        fhir.search("Observation", patient=PATIENT).to_pandas(progress=True)
        err = capsys.readouterr().err
        assert "FHIR search" in err and "resources" in err
