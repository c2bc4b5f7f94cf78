"""100,000 Observations of one patient into a DataFrame: ours vs fhirpy vs fhir-pyrate.

Starts a sandbox with ``--dense-patient-observations N`` (patient ``dense``;
``BENCH_OBSERVATIONS``, default 100,000), gets one Backend Services token and
runs each client in a fresh Python process, one after another, against the
same server with the same query (``Observation?patient=dense&_count=1000``,
every ``next`` link followed):

* **ours**: ``connect(base, token=...).search(...).to_pandas()`` (typed columns);
* **fhirpy**: ``SyncFHIRClient.resources(...).search(...).limit(1000).fetch_all()``,
  then ``pandas.json_normalize`` of the resources;
* **fhir-pyrate**: ``Pirate.steal_bundles_to_dataframe`` (its default
  flattening), if it is installed (``pip install fhir-pyrate``).

Per client: resources/s (wall clock, from the first request to the finished
DataFrame), client CPU seconds (user+system of that process), peak memory
(``ru_maxrss`` of that process, which includes the interpreter and pandas).
Libraries are imported before the clock starts (a notebook imports once).
``BENCH_REPEAT`` (default 1) repeats each client and keeps the median run;
``BENCH_CLIENTS`` (e.g. ``ours,fhirpy``) picks the clients.
The token reaches each worker on stdin, never in argv or the environment.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

READY = re.compile(r"SMART sandbox ready: iss=(\S+)")
PATIENT = "dense"
PAGE = 1000
CLIENTS = ("ours", "fhirpy", "fhir-pyrate")


# --- workers (each runs in its own process) ------------------------------------------


def _usage() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime, me.ru_maxrss / 1024  # Linux: KiB -> MiB


def _ours(base: str, token: str) -> int:
    from jupyterhub_smart.notebook import connect

    fhir = connect(base, token=token, page_size=PAGE, check_scopes=False, progress=False)
    frame = fhir.search("Observation", patient=PATIENT).to_pandas()
    assert frame["value"].notna().all()
    return len(frame)


def _fhirpy(base: str, token: str) -> int:
    import pandas as pd
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base, authorization=f"Bearer {token}")
    found = client.resources("Observation").search(patient=PATIENT).limit(PAGE).fetch_all()
    frame = pd.json_normalize([r.serialize() for r in found])
    return len(frame)


def _pyrate(base: str, token: str) -> int:
    import requests
    from fhir_pyrate import Pirate

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    pirate = Pirate(base_url=base, auth=session, num_processes=1, print_request_url=False)
    frame = pirate.steal_bundles_to_dataframe(
        "Observation", request_params={"patient": PATIENT, "_count": PAGE}
    )
    return len(frame)


WORKERS = {"ours": _ours, "fhirpy": _fhirpy, "fhir-pyrate": _pyrate}
#: Imported before the clock starts: a notebook pays for imports once, not per search.
IMPORTS = {
    "ours": ("pandas", "pyarrow", "jupyterhub_smart.notebook"),
    "fhirpy": ("pandas", "fhirpy"),
    "fhir-pyrate": ("pandas", "fhir_pyrate"),
}


def worker(name: str, base: str) -> None:
    """Run one client once; print one JSON line with its figures."""
    import importlib

    token = sys.stdin.readline().strip()
    for module in IMPORTS[name]:
        importlib.import_module(module)
    cpu0, _ = _usage()
    start = time.perf_counter()
    rows = WORKERS[name](base, token)
    wall = time.perf_counter() - start
    cpu1, peak = _usage()
    print(json.dumps({"rows": rows, "wall": wall, "cpu": cpu1 - cpu0, "peak_mib": peak}))


# --- the driver ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_sandbox(
    workdir: Path, observations: int, secret: str
) -> tuple[subprocess.Popen[str], str]:
    clients = [
        {
            "client_id": "bench-notebook",
            "type": "confidential-symmetric",
            "client_secret": secret,
            "redirect_uris": ["http://127.0.0.1:9/callback"],
            "scope": "system/*.rs",
        }
    ]
    (workdir / "clients.json").write_text(json.dumps(clients), encoding="utf-8")
    cmd = [
        sys.executable, "-m", "jupyterhub_smart", "sandbox",
        "--port", str(_free_port()),
        "--data-dir", os.environ.get("BENCH_DATA_DIR", str(workdir / "data")),
        "--patients", "5", "--seed", "42",
        "--clients", str(workdir / "clients.json"),
        "--dense-patient-observations", str(observations),
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            match = READY.search(line)
            if match and not ready.is_set():
                found.append(match[1])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(900) or process.poll() is not None:
        process.kill()
        raise SystemExit("the sandbox did not start")
    return process, found[0]


def _token(iss: str, secret: str) -> str:
    origin = iss.rsplit("/fhir", 1)[0]
    response = httpx.post(
        f"{origin}/auth/token",
        auth=("bench-notebook", secret),
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _installed(name: str) -> bool:
    module = {"ours": "jupyterhub_smart", "fhirpy": "fhirpy", "fhir-pyrate": "fhir_pyrate"}[name]
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def _run(name: str, iss: str, token: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_notebook_fetch", "--worker", name, iss],
        input=token + "\n",
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time."""
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]


def print_spread(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Per client with several runs: each run's wall time and their spread."""
    for name, each in runs.items():
        if len(each) > 1:
            walls = [x["wall"] for x in each]
            print(
                f"{name}: wall s per run {', '.join(f'{w:.2f}' for w in walls)} (stdev {statistics.pstdev(walls):.2f})"
            )


def main() -> None:
    observations = int(os.environ.get("BENCH_OBSERVATIONS", "100000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "1"))
    secret = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        process, iss = _start_sandbox(Path(tmp), observations, secret)
        try:
            wanted = os.environ.get("BENCH_CLIENTS", ",".join(CLIENTS)).split(",")
            available = [c for c in CLIENTS if c in wanted and _installed(c)]
            for missing in sorted(set(CLIENTS) & set(wanted) - set(available)):
                print(f"{missing}: not installed (pip install {missing}); skipped")
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in available}
            for _ in range(repeat):
                for name in available:  # interleaved, so that load drifts hit all alike
                    runs[name].append(_run(name, iss, _token(iss, secret)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    results = {n: median_run(r) for n, r in runs.items()}
    print(
        f"\n{observations:,} Observations of one patient into a DataFrame "
        f"(page size {PAGE}, median of {repeat} run(s) each, fresh process per run)\n"
    )
    print(
        f"{'client':<12} {'rows':>8} {'wall s':>8} {'resources/s':>12} {'CPU s':>8} {'peak MiB':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<12} {r['rows']:>8,} {r['wall']:>8.2f} {observations / r['wall']:>12,.0f} "
            f"{r['cpu']:>8.2f} {r['peak_mib']:>9.0f}"
        )
    ours = results.get("ours")
    if ours:
        print()
        for name, r in results.items():
            if name == "ours":
                continue
            print(
                f"ours vs {name}: {r['wall'] / ours['wall']:.1f}x faster, "
                f"{r['cpu'] / ours['cpu']:.1f}x less CPU, "
                f"peak memory {ours['peak_mib'] / r['peak_mib']:.2f} of theirs"
            )
        if "fhirpy" in results:
            fp = results["fhirpy"]
            speed_ok = fp["wall"] / ours["wall"] >= 8
            memory_ok = ours["peak_mib"] <= fp["peak_mib"] / 3
            print(
                f"goal (>= 8x fhirpy, peak memory <= 1/3): speed {'met' if speed_ok else 'NOT met'}, "
                f"memory {'met' if memory_ok else 'NOT met'}"
            )
    if len({r["rows"] for r in results.values()}) > 1:
        print("note: row counts differ (json_normalize keeps one row per resource, as do we here)")
    print_spread(runs)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
