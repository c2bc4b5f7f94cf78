"""Search results to a DataFrame through the Observation view, and paging behind a 50 ms server.

Starts one sandbox with ``--dense-patient-observations N`` (``BENCH_OBSERVATIONS``,
default 100,000; 1,000 per page) and runs each client in a fresh process,
interleaved, ``BENCH_REPEAT`` times (median kept):

1. **Flattening**, straight against the sandbox:

   * **views**: ``search(...).to_pandas()`` of this checkout (the built-in
     Observation view, compiled);
   * **hand-written**: the same call in the checkout of ``BENCH_BASELINE_REV``
     (default: the commit before the views replaced ``notebook/flatten.py``'s
     hand-written flatteners), put first on ``PYTHONPATH``;
   * **fhirpy**: ``fetch_all()`` and ``json_normalize`` (as in bench_notebook_fetch).

2. **Latency**: the same search through a proxy that makes each page take
   ``BENCH_PAGE_DELAY`` (default 0.05 s), as a real EHR takes 50-200 ms per
   page: it asks the sandbox at once and answers when the delay has passed
   since the request arrived (the sandbox's own ~10 ms per page is part of
   the server's 50 ms, not added to it). ``BENCH_DELAY_MODE=added`` waits the
   delay first and then asks the sandbox instead (each page then takes the
   delay plus the sandbox's time, and the table shows that time per page).
   The proxy keeps connections alive (HTTP/1.1), as EHRs do. Clients: ours
   sync (next page prefetched), ours sync without prefetch, ours async
   (prefetched), fhirpy; the floor is pages x delay, and each client's wall
   time is printed as a multiple of the floor and against fhirpy's. A
   calibration client (``fetch-only``: plain httpx, the pages one after the
   other, no parsing) shows what the server and the machine's load allow.

Each worker creates its client before the clock starts (``connect()``, or
fhirpy's ``SyncFHIRClient``: a notebook does that once per session; in a fresh
process ours costs about 0.1-0.2 s for httpx's lazy imports and its TLS
context) and times the search: from the first request to the finished frame.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.bench_notebook_fetch import (
    PAGE,
    PATIENT,
    _start_sandbox,
    _token,
    _usage,
    median_run,
    print_spread,
)

ROOT = Path(__file__).resolve().parent.parent
#: The commit whose parent still has the hand-written flatteners.
VIEWS_COMMIT_GREP = "the hand-written flatteners go"


# --- workers (each runs in its own process) ------------------------------------------


def _ours(base: str, token: str, prefetch: bool = True) -> Callable[[], int]:
    from jupyterhub_smart.notebook import connect

    fhir = connect(base, token=token, page_size=PAGE, check_scopes=False, progress=False)

    def run() -> int:
        result = fhir.search("Observation", patient=PATIENT)
        result.prefetch = prefetch
        frame = result.to_pandas()
        assert frame["value"].notna().all()
        return len(frame)

    return run


def _ours_no_prefetch(base: str, token: str) -> Callable[[], int]:
    return _ours(base, token, prefetch=False)


def _ours_async(base: str, token: str) -> Callable[[], int]:
    import asyncio

    from jupyterhub_smart.notebook import connect_async

    fhir = connect_async(base, token=token, page_size=PAGE, check_scopes=False)
    # httpx imports anyio's asyncio backend on a process's first async request (~55 ms,
    # once per notebook session), as the sync client's imports happen in connect()
    import anyio._backends._asyncio  # noqa: F401

    async def search() -> int:
        async with fhir:
            frame = await (await fhir.search("Observation", patient=PATIENT)).to_pandas()
            return len(frame)

    return lambda: asyncio.run(search())


def _fhirpy(base: str, token: str) -> Callable[[], int]:
    import pandas as pd
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base, authorization=f"Bearer {token}")

    def run() -> int:
        found = client.resources("Observation").search(patient=PATIENT).limit(PAGE).fetch_all()
        return len(pd.json_normalize([r.serialize() for r in found]))

    return run


def _fetch_only(base: str, token: str) -> Callable[[], int]:
    """Calibration: the pages one after the other and nothing else (no parse, no frame).

    What the server and this machine allow a client that does no work at all;
    the next link is cut out of the bytes (the sandbox writes it compactly).
    """
    client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    marker = b'"relation":"next","url":"'

    def run() -> int:
        url: str | None = f"{base}/Observation?patient={PATIENT}&_count={PAGE}"
        pages = 0
        while url:
            body = client.get(url).content
            pages += 1
            at = body.find(marker)
            url = (
                body[at + len(marker) : body.index(b'"', at + len(marker))].decode()
                if at >= 0
                else None
            )
        return pages * PAGE

    return run


#: Each worker connects (a notebook does that once per session), then returns the search
#: that is timed: from the first request to the finished DataFrame.
WORKERS = {
    "ours": _ours,
    "ours-no-prefetch": _ours_no_prefetch,
    "ours-async": _ours_async,
    "fhirpy": _fhirpy,
    "fetch-only": _fetch_only,
}


def worker(name: str, base: str) -> None:
    """Run one client once; print one JSON line with its figures."""
    import importlib

    token = sys.stdin.readline().strip()
    for module in (
        "pandas",
        "pyarrow",
        "jupyterhub_smart.notebook" if name != "fhirpy" else "fhirpy",
    ):
        importlib.import_module(module)
    if name != "fhirpy":
        import jupyterhub_smart

        print(f"package: {Path(jupyterhub_smart.__file__).parent.parent}", file=sys.stderr)
    run = WORKERS[name](base, token)
    cpu0, _ = _usage()
    start = time.perf_counter()
    rows = run()
    wall = time.perf_counter() - start
    cpu1, peak = _usage()
    print(json.dumps({"rows": rows, "wall": wall, "cpu": cpu1 - cpu0, "peak_mib": peak}))


# --- the driver ------------------------------------------------------------------------


#: Runs a worker of this bench against another checkout's package: the bench module is
#: imported from here first, then the checkout goes first on ``sys.path`` for
#: ``jupyterhub_smart`` (``python -m`` would put this folder, and so this package, first).
_OTHER_CHECKOUT = (
    "import sys; sys.path.insert(0, sys.argv[1]); import bench.bench_views_search as b; "
    "sys.path.insert(0, sys.argv[2]); b.worker(sys.argv[3], sys.argv[4])"
)


def _run(name: str, base: str, token: str, checkout: Path = ROOT) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.bench_views_search", "--worker", name, base]
    if checkout != ROOT:
        command = [sys.executable, "-c", _OTHER_CHECKOUT, str(ROOT), str(checkout), name, base]
    result = subprocess.run(command, input=token + "\n", capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _baseline_checkout(folder: Path) -> Path | None:
    """A detached worktree at the last commit with the hand-written flatteners."""
    rev = os.environ.get("BENCH_BASELINE_REV")
    if not rev:
        found = subprocess.run(
            ["git", "log", "-1", "--format=%H", f"--grep={VIEWS_COMMIT_GREP}"],
            capture_output=True, text=True, cwd=ROOT, check=False,
        )  # fmt: skip
        if found.returncode != 0 or not found.stdout.strip():
            return None
        rev = found.stdout.strip() + "^"
    target = folder / "baseline"
    added = subprocess.run(
        ["git", "worktree", "add", "--detach", str(target), rev],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    return target if added.returncode == 0 else None


class _SlowProxy(http.server.ThreadingHTTPServer):
    """Answers GETs with the sandbox's answer ``delay`` seconds after they arrive.

    Links are rewritten to itself. ``added=True`` waits ``delay`` first and then
    asks the sandbox. ``upstream_s`` collects the sandbox's time per request.
    """

    daemon_threads = True

    def __init__(self, upstream: str, delay: float, added: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.added = added
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.client = httpx.Client(timeout=120)
        self.upstream_s: list[float] = []


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _SlowProxy
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        arrived = time.perf_counter()
        if self.server.added:
            time.sleep(self.server.delay)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept")
        }
        asked = time.perf_counter()
        response = self.server.client.get(self.server.upstream + self.path, headers=headers)
        body = response.content.replace(self.server.upstream.encode(), self.server.origin.encode())
        self.server.upstream_s.append(time.perf_counter() - asked)
        if not self.server.added:
            time.sleep(max(0.0, arrived + self.server.delay - time.perf_counter()))
        self.send_response(response.status_code)
        self.send_header("Content-Type", response.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _table(title: str, results: dict[str, dict[str, Any]], observations: int) -> None:
    print(f"\n{title}\n")
    print(
        f"{'client':<18} {'rows':>8} {'wall s':>8} {'resources/s':>12} {'CPU s':>8} {'peak MiB':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:<18} {r['rows']:>8,} {r['wall']:>8.2f} {observations / r['wall']:>12,.0f} "
            f"{r['cpu']:>8.2f} {r['peak_mib']:>9.0f}"
        )


def main() -> None:
    observations = int(os.environ.get("BENCH_OBSERVATIONS", "100000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "1"))
    delay = float(os.environ.get("BENCH_PAGE_DELAY", "0.05"))
    secret = secrets.token_urlsafe(24)
    pages = -(-observations // PAGE)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _baseline_checkout(Path(tmp))
        process, iss = _start_sandbox(Path(tmp), observations, secret)
        origin = iss.rsplit("/fhir", 1)[0]
        added = os.environ.get("BENCH_DELAY_MODE", "answer") == "added"
        proxy = _SlowProxy(origin, delay, added)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        slow_iss = proxy.origin + "/fhir"
        flat: dict[str, list[dict[str, Any]]] = {"views": [], "fhirpy": []}
        slow_names = [n for n in WORKERS if n != "fetch-only"] + ["fetch-only"]
        if baseline is not None:
            flat["hand-written"] = []
        slow: dict[str, list[dict[str, Any]]] = {name: [] for name in slow_names}
        try:
            for _ in range(repeat):
                flat["views"].append(_run("ours", iss, _token(iss, secret)))
                if baseline is not None:
                    flat["hand-written"].append(_run("ours", iss, _token(iss, secret), baseline))
                flat["fhirpy"].append(_run("fhirpy", iss, _token(iss, secret)))
                for name in slow_names:
                    slow[name].append(_run(name, slow_iss, _token(iss, secret)))
        finally:
            proxy.shutdown()
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            if baseline is not None:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False
                )
    flat_results = {name: median_run(runs) for name, runs in flat.items()}
    slow_results = {name: median_run(runs) for name, runs in slow.items()}
    _table(
        f"{observations:,} Observations into a DataFrame, no added latency "
        f"(page size {PAGE}, median of {repeat} run(s), fresh process per run)",
        flat_results,
        observations,
    )
    views_run = flat_results["views"]
    if "hand-written" in flat_results:
        hand = flat_results["hand-written"]
        print(
            f"\nviews vs hand-written: wall {hand['wall'] / views_run['wall']:.2f}x, "
            f"CPU {hand['cpu'] / views_run['cpu']:.2f}x (above 1 = views faster)"
        )
    else:
        print("\nhand-written baseline: no checkout (set BENCH_BASELINE_REV)")
    fp = flat_results["fhirpy"]
    print(f"views vs fhirpy: {fp['wall'] / views_run['wall']:.1f}x faster")
    how = "added to the sandbox's time" if added else "per page (the sandbox's time included)"
    _table(
        f"The same search, {delay * 1000:.0f} ms {how} ({pages} pages): floor "
        f"{pages * delay:.2f} s",
        slow_results,
        observations,
    )
    floor = pages * delay
    sandbox_ms = sorted(proxy.upstream_s)[len(proxy.upstream_s) // 2] * 1000
    print(f"\nthe sandbox's own time per page (median, inside the proxy): {sandbox_ms:.1f} ms")
    slow_fhirpy = slow_results["fhirpy"]["wall"]
    fetch_only = slow_results["fetch-only"]["wall"]
    for name, r in slow_results.items():
        print(
            f"{name}: {r['wall'] / floor:.2f}x the floor, "
            f"{slow_fhirpy / r['wall']:.1f}x faster than fhirpy, "
            f"{r['wall'] / fetch_only:.2f}x the fetch-only client"
        )
    print("goal (ours and ours-async within 10% of the floor): ", end="")
    met = all(slow_results[n]["wall"] <= 1.1 * floor for n in ("ours", "ours-async"))
    print("met" if met else "NOT met")
    print_spread({**flat, **slow})


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
