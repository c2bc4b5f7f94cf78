"""``--out s3://...``: the export lands in an S3-compatible server (moto) on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest
import s3fs
from sandbox_process import free_port

from .conftest import BulkEnv


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A moto S3 server on a free loopback port, and the environment that points clients at it."""
    port = free_port()
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield env
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_export_to_s3_is_a_dataset_pyarrow_reads(
    sandbox_env: BulkEnv, s3: dict[str, str], tmp_path: Path
) -> None:
    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        client_kwargs={"endpoint_url": s3["AWS_ENDPOINT_URL"]},
    )
    fs.mkdir("exports")
    done = subprocess.run(
        [
            sys.executable, "-m", "jupyterhub_smart", "bulk", "export",
            *sandbox_env.cli_args(Path("unused")), "--out", "s3://exports/run1",
            "--work-dir", str(tmp_path / "work"), "--type", "Patient,Condition", "--json",
        ],
        capture_output=True, text=True, timeout=180, check=False, env={**os.environ, **s3},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["remote"] == "s3://exports/run1"
    patients = ds.dataset(
        "exports/run1/parquet/Patient", filesystem=fs, format="parquet"
    ).to_table()
    assert patients.num_rows == summary["resources"]["Patient"] > 0
    assert fs.exists("exports/run1/export.json")
    assert fs.find("exports/run1/ndjson/Condition")
    local = ds.dataset(tmp_path / "work" / "parquet" / "Condition", format="parquet").to_table()
    remote = ds.dataset(
        "exports/run1/parquet/Condition", filesystem=fs, format="parquet"
    ).to_table()
    assert sorted(local["resource_id"].to_pylist()) == sorted(remote["resource_id"].to_pylist())
