"""Crash-resume: SIGKILL the CLI at random points, ``--resume`` until done; every row exactly once.

The killed runs and their resumes must end with exactly the Parquet content
and NDJSON lines of an uninterrupted run: no row lost, none duplicated.
"""

from __future__ import annotations

import gzip
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds

from .conftest import BulkEnv, bulk_sandbox

TYPES = "Patient,Observation,Condition"
#: Slow bytes and tiny chunks: many commit points for a kill to fall between.
SLOW = ["--bulk-faults", "slow:*"]
EXTRA = ["--type", TYPES, "--parallel", "2", "--chunk-lines", "7"]


def rows(out: Path, resource_type: str) -> list[bytes]:
    """Every Parquet row of a type, canonical and sorted (part names and order differ by run)."""
    table = ds.dataset(out / "parquet" / resource_type, format="parquet").to_table()
    return sorted(
        orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str) for row in table.to_pylist()
    )


def ndjson_lines(out: Path, resource_type: str) -> list[bytes]:
    lines: list[bytes] = []
    for path in (out / "ndjson" / resource_type).iterdir():
        data = path.read_bytes()
        lines.extend((gzip.decompress(data) if path.suffix == ".gz" else data).splitlines())
    return sorted(lines)


def status(out: Path) -> str | None:
    try:
        return str(orjson.loads((out / "export.json").read_bytes())["status"])
    except FileNotFoundError:
        return None


def killed_run(env: BulkEnv, out: Path, rng: random.Random, clean_seconds: float) -> bool:
    """One CLI run (a resume when there is something to resume), SIGKILLed at a random moment.

    The moment is drawn within the time a clean run took on this machine, so the
    kills land inside the export whether the machine is quiet or loaded.
    Returns True if the run finished before the kill.
    """
    resume = ["--resume"] if status(out) in ("kicked-off", "downloading") else []
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterhub_smart",
            "bulk",
            "export",
            *env.cli_args(out),
            *EXTRA,
            *resume,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + rng.uniform(0.05, 0.9) * clean_seconds
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return False
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    return True


def test_sigkill_at_random_points_then_resume_equals_a_clean_run(keys: Any, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with bulk_sandbox(tmp_path / "sbx", keys, SLOW) as env:
        clean = tmp_path / "clean"
        started = time.monotonic()
        done = env.cli(clean, *EXTRA, "--json")
        clean_seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        expected = orjson.loads(done.stdout)["resources"]
        kills = 0
        for attempt in range(3):
            out = tmp_path / f"killed-{attempt}"
            for _ in range(12):
                # a kill after the state says "complete" (during the final DELETE) ends it too
                if status(out) == "complete" or killed_run(env, out, rng, clean_seconds):
                    break
                kills += 1
            else:
                finish = env.cli(
                    out,
                    *EXTRA,
                    *(["--resume"] if status(out) in ("kicked-off", "downloading") else []),
                )
                assert finish.returncode == 0, finish.stderr
            assert status(out) == "complete", f"seed {seed}"
            summary = orjson.loads((out / "export.json").read_bytes())["summary"]
            assert summary["resources"] == expected, f"seed {seed}"
            for resource_type in TYPES.split(","):
                assert rows(out, resource_type) == rows(clean, resource_type), f"seed {seed}"
                assert ndjson_lines(out, resource_type) == ndjson_lines(clean, resource_type), (
                    f"seed {seed}"
                )
        assert kills >= 3, f"seed {seed}: the runs finished before most kills; nothing was tested"


def test_ctrl_c_stops_cleanly_and_the_export_resumes(keys: Any, tmp_path: Path) -> None:
    with bulk_sandbox(tmp_path / "sbx", keys, SLOW) as env:
        out = tmp_path / "out"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterhub_smart",
                "bulk",
                "export",
                *env.cli_args(out),
                *EXTRA,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while status(out) != "downloading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status(out) == "downloading"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "--resume" in err
        assert status(out) == "downloading"
        done = env.cli(out, *EXTRA, "--resume", "--json")
        assert done.returncode == 0, done.stderr
        clean = env.cli(tmp_path / "clean", *EXTRA, "--json")
        assert orjson.loads(done.stdout)["resources"] == orjson.loads(clean.stdout)["resources"]
        for resource_type in TYPES.split(","):
            assert rows(out, resource_type) == rows(tmp_path / "clean", resource_type)
