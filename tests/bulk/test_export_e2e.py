"""End to end: the bulk client against a real sandbox process, one test per feature."""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.dataset as ds
import pytest

from jupyterhub_smart import bulk
from jupyterhub_smart.bulk.auth import BackendServicesAuth, discover_token_endpoint

from .conftest import CLIENT_ID, BulkEnv, bulk_sandbox

DELETED_CUT = "2025-07-01T12:00:00Z"


def db_count(env: BulkEnv, resource_type: str, where: str = "1", args: tuple[Any, ...] = ()) -> int:
    with sqlite3.connect(env.sandbox.data_dir / "fhir.sqlite") as conn:
        sql = f"SELECT COUNT(*) FROM resources WHERE type = ? AND {where}"  # noqa: S608 (test literals)
        return int(conn.execute(sql, (resource_type, *args)).fetchone()[0])


def distinct_ids(out: Path, resource_type: str) -> list[str]:
    table = ds.dataset(out / "parquet" / resource_type, format="parquet").to_table(
        columns=["resource_id"]
    )
    return sorted(set(table["resource_id"].to_pylist()))


def test_cli_export_writes_ndjson_parquet_and_summary(sandbox_env: BulkEnv, tmp_path: Path) -> None:
    out = tmp_path / "out"
    audit_log = tmp_path / "audit.jsonl"
    done = sandbox_env.cli(
        out, "--type", "Patient,Observation", "--type", "Condition", "--json",
        "--audit-log", str(audit_log),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    expected = {
        "Patient": db_count(sandbox_env, "Patient"),
        "Observation": db_count(sandbox_env, "Observation") - 3,  # three count as deleted
        "Condition": db_count(sandbox_env, "Condition"),
    }
    assert summary["resources"] == expected
    assert summary["exit_code"] == 0
    assert summary["files"] > 3  # Observations span several files
    for resource_type, count in expected.items():
        assert len(distinct_ids(out, resource_type)) == count
        files = sorted((out / "ndjson" / resource_type).iterdir())
        assert files and all(f.name.endswith(".ndjson.gz") for f in files)  # kept as sent
        assert sum(len(gzip.decompress(f.read_bytes()).splitlines()) for f in files) == count
    # DuckDB and pyarrow.dataset read the layout as is
    connection = duckdb.connect()
    rows = connection.execute(
        "SELECT count(DISTINCT resource_id) FROM read_parquet(?)",
        [f"{out}/parquet/Observation/*.parquet"],
    ).fetchone()
    assert rows is not None
    assert rows[0] == expected["Observation"]
    patients = ds.dataset(out / "parquet" / "Patient", format="parquet").to_table()
    assert {"resource_id", "resource", "gender", "birth_date"} <= set(patients.column_names)
    raw = orjson.loads(patients["resource"][0].as_py())
    assert raw["resourceType"] == "Patient"
    state = orjson.loads((out / "export.json").read_bytes())
    assert state["status"] == "complete"
    assert state["transaction_time"] == summary["transactionTime"]
    # the finished job was DELETEd at the server
    sandbox_env.sandbox.wait_for_log(f"deleted by client {CLIENT_ID}")
    events = [orjson.loads(line) for line in audit_log.read_bytes().splitlines()]
    descriptions = [e["outcomeDesc"] for e in events if e["subtype"][0]["code"] == "bulk-export"]
    assert descriptions == [
        "started: level=system types=Patient,Observation,Condition files=0",
        f"completed: level=system types=Patient,Observation,Condition files={summary['files']}",
    ]
    assert "Bearer" not in audit_log.read_text() and "eyJ" not in audit_log.read_text()


def test_python_api_group_export_views_pandas_duckdb(sandbox_env: BulkEnv, tmp_path: Path) -> None:
    result = bulk.export(
        **sandbox_env.api_args(tmp_path / "out"),
        group="hypertension",
        types=["Patient", "Condition", "Observation"],
        views=["Observation"],
    )
    assert result.exit_code == 0
    with sqlite3.connect(sandbox_env.sandbox.data_dir / "fhir.sqlite") as conn:
        members = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT r.patient FROM resources r JOIN tokens t ON t.seq = r.seq "
                "WHERE r.type = 'Condition' AND t.param = 'code' AND t.value = '38341003'"
            )
        }
    assert members
    assert set(result.table("Patient")["resource_id"].to_pylist()) == members
    frame = result.to_pandas("Condition")
    assert set(frame["subject"]) <= {f"Patient/{m}" for m in members} | set(members)
    connection = result.duckdb()
    (count,) = connection.execute(
        'SELECT count(DISTINCT resource_id) FROM "Observation"'
    ).fetchone()
    assert count == result.summary["resources"]["Observation"]
    assert list((tmp_path / "out" / "views").iterdir())  # --view output
    with pytest.raises(KeyError):
        result.table("Encounter")


def test_patient_level_post_with_rs384_key_and_repeated_parameters(
    sandbox_env: BulkEnv, tmp_path: Path
) -> None:
    args = sandbox_env.api_args(tmp_path / "out")
    args["key"] = sandbox_env.rs_key
    result = bulk.export(
        **args,
        patient_level=True,
        types="Patient,Encounter",
        patients=["patient-00002"],
        method="POST",
        param_style="repeat",
    )
    assert result.table("Patient")["resource_id"].to_pylist() == ["patient-00002"]
    assert result.summary["resources"]["Encounter"] == db_count(
        sandbox_env, "Encounter", "patient = ?", ("patient-00002",)
    )


def test_deleted_resources_are_removed_from_earlier_runs(
    sandbox_env: BulkEnv, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = bulk.export(**sandbox_env.api_args(out), types="Observation", until=DELETED_CUT)
    everything = db_count(sandbox_env, "Observation")
    assert first.summary["resources"]["Observation"] == everything
    second = bulk.export(**sandbox_env.api_args(out), types="Observation", since=DELETED_CUT)
    assert second.summary["deleted"] == 3
    assert second.summary["resources"] == {}
    remaining = distinct_ids(out, "Observation")
    assert len(remaining) == everything - 3
    deleted = ds.dataset(out / "deleted" / "parquet", format="parquet").to_table().to_pylist()
    assert len(deleted) == 3
    assert not {d["resource_id"] for d in deleted} & set(remaining)


def test_since_auto_uses_the_previous_transaction_time(
    sandbox_env: BulkEnv, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = sandbox_env.cli(out, "--type", "Patient", "--json")
    assert first.returncode == 0, first.stderr
    transaction_time = orjson.loads(first.stdout)["transactionTime"]
    second = sandbox_env.cli(out, "--type", "Patient", "--since", "auto", "--json")
    assert second.returncode == 0, second.stderr
    state = orjson.loads((out / "export.json").read_bytes())
    assert state["since"] == transaction_time
    assert "_since=" in state["manifest_request"]
    assert orjson.loads(second.stdout)["resources"] == {}
    assert len(distinct_ids(out, "Patient")) == db_count(sandbox_env, "Patient")  # kept


def test_error_file_is_kept_and_summarised_with_exit_3(
    sandbox_env: BulkEnv, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = sandbox_env.cli(
        out, "--type", "Patient,Condition", "--scope", "system/Patient.rs", "--json"
    )
    assert done.returncode == 3, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["server_errors"] == {"error:forbidden": 1}
    assert summary["resources"] == {"Patient": db_count(sandbox_env, "Patient")}
    (error_file,) = (out / "errors").glob("*.ndjson*")
    assert b"Condition" in error_file.read_bytes() or b"Condition" in gzip.decompress(
        error_file.read_bytes()
    )


def test_bad_arguments_are_usage_errors(sandbox_env: BulkEnv, tmp_path: Path) -> None:
    done = sandbox_env.cli(tmp_path / "o", "--type", "Patient", "--view", "no-such-view")
    assert done.returncode == 1
    assert "no-such-view" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "jupyterhub_smart", "bulk", "export", "--fhir-url", "x"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    wrong_key = sandbox_env.cli(tmp_path / "o2", "--type", "Patient")
    assert wrong_key.returncode == 0
    nothing = sandbox_env.cli(tmp_path / "o2", "--resume")
    assert nothing.returncode == 1
    assert "no unfinished export" in nothing.stderr


def test_faults_of_the_server_are_survived(keys: Any, tmp_path: Path) -> None:
    faults = (
        "kickoff-429,status-429,status-500,status-transient,retry-after-date,file-503:2,"
        "truncate:2,expire,slow:3"
    )
    with bulk_sandbox(tmp_path / "sbx", keys, ["--bulk-faults", faults]) as env:
        result = bulk.export(**env.api_args(tmp_path / "out"), types="Patient,Observation")
        assert result.exit_code == 0, result.summary
        assert result.summary["resources"] == {
            "Patient": db_count(env, "Patient"),
            "Observation": db_count(env, "Observation"),
        }
        assert len(distinct_ids(tmp_path / "out", "Observation")) == db_count(env, "Observation")


def test_tokens_are_reminted_during_a_long_download(keys: Any, tmp_path: Path) -> None:
    with bulk_sandbox(
        tmp_path / "sbx", keys, ["--access-token-lifetime", "2", "--bulk-faults", "slow:*"]
    ) as env:
        import httpx

        with httpx.Client(timeout=30) as http:
            auth = BackendServicesAuth(
                http,
                discover_token_endpoint(http, env.fhir_url),
                CLIENT_ID,
                str(env.key),
                "system/*.rs",
            )
            result = bulk.export(
                fhir_url=env.fhir_url, out=tmp_path / "out", auth=auth, http=http,
                types="Observation", lock_dir=env.lock_dir, parallel=1,
            )  # fmt: skip
        assert result.summary["resources"]["Observation"] == db_count(env, "Observation")
        assert auth.mint_count >= 2


def test_timeout_keeps_the_job_and_cancel_deletes_it(keys: Any, tmp_path: Path) -> None:
    with bulk_sandbox(tmp_path / "sbx", keys, ["--bulk-faults", "forever:*"]) as env:
        out = tmp_path / "out"
        done = env.cli(out, "--type", "Patient", "--timeout", "3")
        assert done.returncode == 4, done.stderr
        assert "--resume" in done.stderr
        state = orjson.loads((out / "export.json").read_bytes())
        assert state["status"] == "kicked-off"
        assert "deleted by client" not in env.sandbox.log_text()  # a timeout never cancels
        again = env.cli(out, "--type", "Patient")
        assert again.returncode == 1
        assert "--resume" in again.stderr
        cancelled = env.cli(out, "--cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        env.sandbox.wait_for_log(f"deleted by client {CLIENT_ID}")
        assert orjson.loads((out / "export.json").read_bytes())["status"] == "cancelled"


def test_second_export_waits_for_the_first(sandbox_env: BulkEnv, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "jupyterhub_smart", "bulk", "export", "--type", "Observation"]
    runs = [
        subprocess.Popen(
            [*cmd, *sandbox_env.cli_args(tmp_path / f"o{i}")], stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    codes = [p.wait(timeout=180) for p in runs]
    assert codes == [0, 0]
