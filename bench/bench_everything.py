"""A patient's whole record into frames: ``everything().to_frames()`` vs fetching types one by one.

Starts a sandbox with ``--dense-patient-observations N`` (patient ``dense``,
``BENCH_OBSERVATIONS``, default 100,000: N Observations plus the Patient) and
runs each client in a fresh process against the same server, one after another
(``BENCH_REPEAT`` times, interleaved; the median run is kept):

* **ours $everything**: ``fhir.everything(patient="dense").to_frames()`` — one
  paged ``Patient/dense/$everything`` (1,000 per page), every type flattened
  through its built-in view;
* **ours per type**: ``fhir.search(type, patient="dense").to_pandas()`` for
  each compartment type (Patient, Condition, MedicationRequest, Encounter,
  Observation, RiskAssessment): the same frames, one search per type;
* **fhirpy per type**: ``SyncFHIRClient.resources(type).search(patient=...)
  .limit(1000).fetch_all()`` for each type, then ``pandas.json_normalize``.

Per client: resources/s (wall clock from the first request to the last frame),
client CPU seconds, peak memory of the process. Imports happen before the clock.
``BENCH_CLIENTS`` (e.g. ``ours-everything,ours-per-type``) picks the clients.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_notebook_fetch import _installed, _start_sandbox, _token, median_run, print_spread

PATIENT = "dense"
PAGE = 1000
TYPES = ("Patient", "Condition", "MedicationRequest", "Encounter", "Observation", "RiskAssessment")
CLIENTS = ("ours-everything", "ours-per-type", "fhirpy-per-type")


def _usage() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime, me.ru_maxrss / 1024


def _ours_everything(base: str, token: str) -> int:
    from jupyterhub_smart.notebook import connect

    fhir = connect(base, token=token, page_size=PAGE, check_scopes=False, progress=False)
    frames = fhir.everything(patient=PATIENT).to_frames()
    return sum(len(f["id"].unique()) for f in frames.values())


def _ours_per_type(base: str, token: str) -> int:
    from jupyterhub_smart.notebook import connect

    fhir = connect(base, token=token, page_size=PAGE, check_scopes=False, progress=False)
    frames = {}
    for kind in TYPES:
        params = {"_id": PATIENT} if kind == "Patient" else {"patient": PATIENT}
        frames[kind] = fhir.search(kind, **params).to_pandas()
    return sum(len(f["id"].unique()) for f in frames.values())


def _fhirpy_per_type(base: str, token: str) -> int:
    import pandas as pd
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base, authorization=f"Bearer {token}")
    frames = {}
    for kind in TYPES:
        params = {"_id": PATIENT} if kind == "Patient" else {"patient": PATIENT}
        found = client.resources(kind).search(**params).limit(PAGE).fetch_all()
        frames[kind] = pd.json_normalize([r.serialize() for r in found])
    return sum(len(f) for f in frames.values())


WORKERS = {
    "ours-everything": _ours_everything,
    "ours-per-type": _ours_per_type,
    "fhirpy-per-type": _fhirpy_per_type,
}
IMPORTS = {
    "ours-everything": ("pandas", "pyarrow", "jupyterhub_smart.notebook"),
    "ours-per-type": ("pandas", "pyarrow", "jupyterhub_smart.notebook"),
    "fhirpy-per-type": ("pandas", "fhirpy"),
}
MODULE = {"ours-everything": "ours", "ours-per-type": "ours", "fhirpy-per-type": "fhirpy"}


def worker(name: str, base: str) -> None:
    import importlib

    token = sys.stdin.readline().strip()
    for module in IMPORTS[name]:
        importlib.import_module(module)
    cpu0, _ = _usage()
    start = time.perf_counter()
    resources = WORKERS[name](base, token)
    wall = time.perf_counter() - start
    cpu1, peak = _usage()
    print(json.dumps({"resources": resources, "wall": wall, "cpu": cpu1 - cpu0, "peak_mib": peak}))


def _run(name: str, iss: str, token: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_everything", "--worker", name, iss],
        input=token + "\n",
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    observations = int(os.environ.get("BENCH_OBSERVATIONS", "100000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "1"))
    secret = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        process, iss = _start_sandbox(Path(tmp), observations, secret)
        try:
            wanted = os.environ.get("BENCH_CLIENTS", ",".join(CLIENTS)).split(",")
            available = [c for c in CLIENTS if c in wanted and _installed(MODULE[c])]
            for missing in sorted(set(CLIENTS) & set(wanted) - set(available)):
                print(f"{missing}: its library is not installed; skipped")
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in available}
            for _ in range(repeat):
                for name in available:
                    runs[name].append(_run(name, iss, _token(iss, secret)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    results = {n: median_run(r) for n, r in runs.items()}
    total = observations + 1
    print(
        f"\nPatient {PATIENT!r}: {total:,} resources into one frame per type "
        f"(page size {PAGE}, median of {repeat} run(s), fresh process per run)\n"
    )
    print(
        f"{'client':<17} {'resources':>9} {'wall s':>8} {'resources/s':>12} {'CPU s':>7} {'peak MiB':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<17} {r['resources']:>9,} {r['wall']:>8.2f} {total / r['wall']:>12,.0f} "
            f"{r['cpu']:>7.2f} {r['peak_mib']:>9.0f}"
        )
    ours = results.get("ours-everything")
    if ours:
        print()
        for name, r in results.items():
            if name != "ours-everything":
                print(
                    f"{name} takes {r['wall'] / ours['wall']:.2f}x the wall time and "
                    f"{r['cpu'] / ours['cpu']:.2f}x the CPU of ours-everything, whose peak "
                    f"memory is {ours['peak_mib'] / r['peak_mib']:.2f} of {name}'s"
                )
    if len({r["resources"] for r in results.values()}) > 1:
        print("note: resource counts differ between clients")
    print_spread(runs)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
