"""How fast a real sandbox process serves search pages of 1,000 Observations over HTTP.

Starts ``jupyterhub-smart sandbox`` (with a ``dense`` patient of
``BENCH_OBSERVATIONS`` Observations, default 100,000), gets a Backend Services
token, then pages through every Observation of that patient with
``_count=1000``, following ``next`` links, over one keep-alive connection.
Prints resources/s and the per-page latency (median, p95, max). Each run
after the first reuses the generated data in ``BENCH_DATA_DIR`` if set;
``BENCH_PATIENTS`` (default 20) sets the other patients in the store, e.g.
10000 to measure pages out of a store of millions of Observations.
"""

from __future__ import annotations

import json
import os
import re
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

import httpx

READY = re.compile(r"SMART sandbox ready: iss=(\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    workdir: Path, data_dir: Path, observations: int, secret: str
) -> tuple[subprocess.Popen[str], str]:
    clients = [
        {
            "client_id": "bench-backend",
            "type": "confidential-symmetric",
            "client_secret": secret,
            "redirect_uris": ["http://127.0.0.1:9/callback"],
            "scope": "system/*.rs",
        }
    ]
    clients_file = workdir / "clients.json"
    clients_file.write_text(json.dumps(clients), encoding="utf-8")
    cmd = [
        sys.executable, "-m", "jupyterhub_smart", "sandbox",
        "--port", str(_free_port()),
        "--data-dir", str(data_dir),
        "--patients", os.environ.get("BENCH_PATIENTS", "20"),
        "--seed", "42",
        "--clients", str(clients_file),
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


def main() -> None:
    observations = int(os.environ.get("BENCH_OBSERVATIONS", "100000"))
    secret = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        data_dir = Path(os.environ.get("BENCH_DATA_DIR") or Path(tmp) / "data")
        started = time.perf_counter()
        process, iss = _start(Path(tmp), data_dir, observations, secret)
        print(
            f"sandbox ready in {time.perf_counter() - started:.1f} s (dense patient: {observations:,} Observations)"
        )
        origin = iss.rsplit("/fhir", 1)[0]
        try:
            with httpx.Client(base_url=origin, timeout=60) as http:
                token = http.post(
                    "/auth/token",
                    data={"grant_type": "client_credentials", "scope": "system/*.rs"},
                    auth=("bench-backend", secret),
                ).json()["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                for label, params in (
                    ("store order", {"patient": "dense", "_count": "1000"}),
                    ("_sort=date", {"patient": "dense", "_count": "1000", "_sort": "date"}),
                ):
                    _measure(http, headers, label, params, observations)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _measure(
    http: httpx.Client, headers: dict[str, str], label: str, params: dict[str, str], expected: int
) -> None:
    # One warm-up page so that connection setup and SQLite's cold cache are not counted.
    http.get("/fhir/Observation", params=params, headers=headers).raise_for_status()
    latencies: list[float] = []
    resources = 0
    url: str | None = None
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        response = (
            http.get("/fhir/Observation", params=params, headers=headers)
            if url is None
            else http.get(url, headers=headers)
        )
        response.raise_for_status()
        body = response.content
        latencies.append(time.perf_counter() - t0)
        bundle = json.loads(body)
        resources += len(bundle.get("entry", []))
        next_links = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not next_links:
            break
        url = next_links[0]
    elapsed = time.perf_counter() - started
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    print(f"pages of 1,000 Observations over HTTP ({label}):")
    print(
        f"  resources: {resources:,} in {len(latencies)} pages, {elapsed:.2f} s (client JSON parse included)"
    )
    print(f"  resources/s: {resources / elapsed:,.0f}")
    print(
        f"  page latency (request to last byte): median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    if resources != expected:
        raise SystemExit(f"expected {expected} Observations, got {resources}")


if __name__ == "__main__":
    main()
