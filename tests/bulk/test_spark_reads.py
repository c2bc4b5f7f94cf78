"""Spark (local mode, Java 17) reads the export's Parquet layout as it is.

pyspark is large, so it lives in the ``[spark]`` extra that ``make test``
installs; a venv made with ``make .venv/.installed`` alone skips this test,
saying so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from jupyterhub_smart import bulk

from .conftest import BulkEnv

HAVE_SPARK = importlib.util.find_spec("pyspark") is not None


@pytest.mark.skipif(not HAVE_SPARK, reason="pyspark: `make test` installs the [spark] extra")
def test_spark_reads_the_parquet_datasets(sandbox_env: BulkEnv, tmp_path: Path) -> None:
    from pyspark.sql import SparkSession

    out = tmp_path / "out"
    result = bulk.export(**sandbox_env.api_args(out), types="Patient,Observation")
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("jupyterhub-smart-bulk-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    try:
        observations = spark.read.parquet(str(out / "parquet" / "Observation"))
        assert (
            observations.select("resource_id").distinct().count()
            == result.summary["resources"]["Observation"]
        )
        patients = spark.read.parquet(str(out / "parquet" / "Patient"))
        assert patients.count() == result.summary["resources"]["Patient"]
        assert {"resource_id", "resource", "gender"} <= set(patients.columns)
    finally:
        spark.stop()
