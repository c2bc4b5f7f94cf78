"""NDJSON Observations to Parquet through the built-in Observation view, against pandas.

Writes sandbox Observations (the synthetic generator's, ids made unique) as
NDJSON files of ``BENCH_VIEWS_MB`` megabytes (default ``50,200``), then runs,
each in a fresh process, one after another on the same file:

* **ours**: ``jupyterhub-smart view run Observation FILE --out X.parquet``
  (streaming, one record batch at a time; ``--engine auto`` = the Arrow engine);
* **python**: the same command with ``--engine python`` (the compiled-closure
  engine, resource by resource: the previous default);
* **duckdb**: the same command with ``--engine duckdb`` (the view as one
  DuckDB query; CPU seconds include DuckDB's threads);
* **pandas**: ``pandas.read_json(FILE, lines=True)``, ``pandas.json_normalize``
  of its records, ``to_parquet`` (object columns as text, which Parquet needs).

Per run: MB/s of NDJSON read (wall clock, imports excluded), CPU seconds and
peak memory (``ru_maxrss`` of that process). The memory of ours should not
grow with the file (compare the two sizes); pandas holds the whole file.

Then the FHIRPath-per-resource baseline, in this process on the first
``BENCH_VIEWS_FHIRPATH`` (default 5,000) resources: the same seven flat
columns evaluated by **fhirpathpy** (each expression compiled once with its R4
model, evaluated per resource) and by **our compiled view**.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Flat columns both FHIRPath engines evaluate in the per-resource baseline.
SIMPLE_COLUMNS = [
    ("id", "id"),
    ("subject", "subject.reference"),
    ("effective", "effective.ofType(dateTime)"),
    ("code", "code.coding.first().code"),
    ("value", "value.ofType(Quantity).value"),
    ("unit", "value.ofType(Quantity).unit"),
    ("status", "status"),
]


def _usage() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime, me.ru_maxrss / 1024  # Linux: KiB -> MiB


def _write_observations(path: Path, megabytes: int) -> int:
    """Sandbox Observations as NDJSON until ``megabytes``; returns the number written."""
    import orjson

    from jupyterhub_smart.sandbox.fhir.synthetic import generate

    pool = [
        orjson.loads(row.json) for row in generate(40, 11) if row.resource_type == "Observation"
    ]
    target = megabytes * 1_000_000
    written = count = 0
    with path.open("wb") as out:
        while written < target:
            for resource_json in pool:
                resource_json["id"] = f"obs-{count}"
                line = orjson.dumps(resource_json) + b"\n"
                out.write(line)
                written += len(line)
                count += 1
                if written >= target:
                    break
    return count


# --- workers (each runs in its own process) ------------------------------------------


def _ours(source: str, out: str) -> int:
    import pyarrow.parquet as pq

    from jupyterhub_smart.cli import main

    assert main(["view", "run", "Observation", source, "--out", out]) == 0
    return int(pq.ParquetFile(out).metadata.num_rows)


def _python(source: str, out: str) -> int:
    import pyarrow.parquet as pq

    from jupyterhub_smart.cli import main

    command = ["view", "run", "Observation", source, "--out", out, "--engine", "python"]
    assert main(command) == 0
    return int(pq.ParquetFile(out).metadata.num_rows)


def _duckdb(source: str, out: str) -> int:
    import pyarrow.parquet as pq

    from jupyterhub_smart.cli import main

    command = ["view", "run", "Observation", source, "--out", out, "--engine", "duckdb"]
    assert main(command) == 0
    return int(pq.ParquetFile(out).metadata.num_rows)


def _pandas(source: str, out: str) -> int:
    import pandas as pd

    frame = pd.read_json(source, lines=True, dtype=False)
    flat = pd.json_normalize(frame.to_dict(orient="records"))
    for name in flat.columns:
        if flat[name].dtype == object:
            flat[name] = flat[name].astype(str)
    flat.to_parquet(out)
    return len(flat)


WORKERS = {"ours": _ours, "python": _python, "duckdb": _duckdb, "pandas": _pandas}
IMPORTS = {
    "ours": ("pyarrow", "pyarrow.parquet", "pyarrow.json", "jupyterhub_smart.views.vector"),
    "python": ("pyarrow", "pyarrow.parquet", "jupyterhub_smart.views"),
    "duckdb": ("pyarrow", "pyarrow.parquet", "jupyterhub_smart.views", "duckdb"),
    "pandas": ("pandas", "pyarrow"),
}


def worker(name: str, source: str, out: str) -> None:
    """Run one converter once; print one JSON line with its figures."""
    import importlib

    for module in IMPORTS[name]:
        importlib.import_module(module)
    # pyarrow imports pandas on its first conversion when pandas is installed: an import too
    with contextlib.suppress(ImportError):
        importlib.import_module("pandas")
    cpu0, _ = _usage()
    start = time.perf_counter()
    rows = WORKERS[name](source, out)
    wall = time.perf_counter() - start
    cpu1, peak = _usage()
    print(json.dumps({"rows": rows, "wall": wall, "cpu": cpu1 - cpu0, "peak_mib": peak}))


def _run(name: str, source: Path, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_views", "--worker", name, str(source), str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# --- the FHIRPath-per-resource baseline --------------------------------------------------


def _fhirpath_baseline(source: Path, limit: int) -> None:
    import orjson

    from jupyterhub_smart import views

    resources = []
    with source.open("rb") as lines:
        for line in lines:
            resources.append(orjson.loads(line))
            if len(resources) >= limit:
                break
    view = {
        "resource": "Observation",
        "select": [{"column": [{"name": n, "path": p} for n, p in SIMPLE_COLUMNS]}],
    }
    compiled = views.compile_view(view)
    start = time.perf_counter()
    ours = [row for r in resources for row in compiled.rows(r)]
    ours_s = time.perf_counter() - start
    try:
        import fhirpathpy
        from fhirpathpy.models import models
    except ImportError:
        print("fhirpathpy: not installed (pip install fhirpathpy); baseline skipped")
        return
    functions = [fhirpathpy.compile(p, model=models["r4"]) for _, p in SIMPLE_COLUMNS]
    start = time.perf_counter()
    theirs = [tuple(f(r) for f in functions) for r in resources]
    theirs_s = time.perf_counter() - start
    first = next(i for i, row in enumerate(ours) if row[4] is not None)
    agree = [v[0] if v else None for v in theirs[first]] == list(ours[first])
    print(
        f"\nFHIRPath per resource, {len(resources):,} Observations x {len(SIMPLE_COLUMNS)} columns "
        f"(same expressions; values agree on a sample row: {agree})"
    )
    print(f"{'engine':<22} {'seconds':>8} {'resources/s':>12}")
    print(f"{'ours (compiled view)':<22} {ours_s:>8.3f} {len(resources) / ours_s:>12,.0f}")
    print(f"{'fhirpathpy':<22} {theirs_s:>8.3f} {len(resources) / theirs_s:>12,.0f}")
    print(f"ours vs fhirpathpy: {theirs_s / ours_s:.0f}x faster")


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_VIEWS_MB", "50,200").split(",")]
    limit = int(os.environ.get("BENCH_VIEWS_FHIRPATH", "5000"))
    # BENCH_VIEWS_SKIP=duckdb leaves a client out; the peers (python, duckdb, pandas) only on
    # files up to this size: pandas holds a whole
    # 1 GB file in about 12 GB of memory, and the slower engines take minutes there
    peers_max = int(os.environ.get("BENCH_VIEWS_PEERS_MAX_MB", "0")) or max(sizes)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in sizes:
            source = folder / f"obs-{size}mb.ndjson"
            count = _write_observations(source, size)
            megabytes = source.stat().st_size / 1e6
            results[size] = {}
            skip = set(os.environ.get("BENCH_VIEWS_SKIP", "").split(","))
            for name in WORKERS:
                if (name != "ours" and size > peers_max) or name in skip:
                    continue
                run = _run(name, source, folder / f"{name}.parquet")
                run["mb"] = megabytes
                run["resources"] = count
                results[size][name] = run
        _fhirpath_baseline(folder / f"obs-{sizes[0]}mb.ndjson", limit)
    print("\nNDJSON Observations -> Parquet (fresh process per run, imports excluded)\n")
    print(
        f"{'file MB':>8} {'client':<8} {'resources':>10} {'rows':>10} {'wall s':>7} "
        f"{'MB/s':>7} {'CPU s':>7} {'peak MiB':>9}"
    )
    for runs in results.values():
        for name, r in runs.items():
            print(
                f"{r['mb']:>8.0f} {name:<8} {r['resources']:>10,} {r['rows']:>10,} {r['wall']:>7.2f} "
                f"{r['mb'] / r['wall']:>7.1f} {r['cpu']:>7.2f} {r['peak_mib']:>9.0f}"
            )
    print()
    for size, runs in results.items():
        if "pandas" not in runs:
            continue
        ours, pandas, python = runs["ours"], runs["pandas"], runs.get("python")
        print(
            f"{size} MB: ours (arrow engine) {pandas['wall'] / ours['wall']:.1f}x faster than pandas "
            f"(CPU {pandas['cpu'] / ours['cpu']:.1f}x less), {ours['mb'] / ours['wall']:.0f} MB/s "
            f"({ours['mb'] / ours['cpu']:.0f} MB per CPU second), "
            f"peak memory {ours['peak_mib'] / pandas['peak_mib']:.2f} of pandas'"
        )
        if python is None:  # BENCH_VIEWS_SKIP=python
            continue
        print(
            f"{size} MB: ours vs the closure engine (--engine python): "
            f"{python['wall'] / ours['wall']:.1f}x faster (CPU {python['cpu'] / ours['cpu']:.1f}x less); "
            f"the closure engine vs pandas: {pandas['wall'] / python['wall']:.1f}x"
        )
        duck = runs.get("duckdb")
        if duck is None:
            continue
        print(
            f"{size} MB: --engine duckdb {pandas['wall'] / duck['wall']:.1f}x faster than pandas "
            f"(CPU {pandas['cpu'] / duck['cpu']:.1f}x less), vs ours: CPU "
            f"{duck['cpu'] / ours['cpu']:.2f}x, peak memory {duck['peak_mib']:.0f} MiB"
        )
    if len(sizes) > 1:
        small, large = results[sizes[0]]["ours"], results[sizes[-1]]["ours"]
        print(
            f"ours, peak memory at {sizes[-1]} MB vs {sizes[0]} MB: {large['peak_mib']:.0f} vs "
            f"{small['peak_mib']:.0f} MiB ({large['peak_mib'] / small['peak_mib']:.2f}x for "
            f"{sizes[-1] / sizes[0]:.0f}x the data)"
        )
        if "pandas" in results[sizes[-1]]:
            pandas_small, pandas_large = results[sizes[0]]["pandas"], results[sizes[-1]]["pandas"]
            print(f"pandas, the same: {pandas_large['peak_mib'] / pandas_small['peak_mib']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
