"""Bulk Data export end to end against a real sandbox: ours vs download + ``pandas.read_json``.

Starts ``jupyterhub-smart sandbox`` with ``BENCH_BULK_PATIENTS`` patients
(default 200, about 67,000 resources; ``BENCH_BULK_TYPE_FILTER`` narrows each
export) and a Backend Services client, then
measures, in one run:

- the end-to-end export (kick-off -> Parquet) with 1, 4 and 8 parallel
  downloads: seconds, MB/s on the wire, resources/s, and the client's peak RSS;
- the convert step alone on the same downloaded files: our line check +
  built-in view + Parquet parts, against ``pandas.read_json(lines=True)``
  (which only parses; it writes nothing), and the ratio;
- resume after a SIGKILL at about 80 % of a fresh export's time: time to
  finish, against the fresh export.

Every export runs as the CLI in its own process (``resource.getrusage`` of
the children gives the peak RSS). ``BENCH_DATA_DIR`` reuses a generated store.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

READY = re.compile(r"SMART sandbox ready: iss=(\S+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    workdir: Path, data_dir: Path, jwks: dict[str, object]
) -> tuple[subprocess.Popen[str], str]:
    clients = [
        {
            "client_id": "bench-bulk",
            "type": "confidential-asymmetric",
            "jwks": jwks,
            "scope": "system/*.rs",
        }
    ]
    clients_file = workdir / "clients.json"
    clients_file.write_text(json.dumps(clients), encoding="utf-8")
    cmd = [
        sys.executable, "-m", "jupyterhub_smart", "sandbox", "--port", str(_free_port()),
        "--data-dir", str(data_dir), "--patients", os.environ.get("BENCH_BULK_PATIENTS", "200"),
        "--seed", "42", "--clients", str(clients_file), "--bulk-job-seconds", "0",
        "--bulk-file-resources", "10000",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        match = READY.search(line)
        if match:
            threading.Thread(target=_drain, args=(process,), daemon=True).start()
            return process, match[1]
    raise SystemExit("the sandbox did not start")


def _drain(process: subprocess.Popen[str]) -> None:
    """Read the sandbox's log so that its pipe never fills."""
    assert process.stdout is not None
    for _ in process.stdout:
        pass


def _export(iss: str, key: Path, out: Path, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    # BENCH_BULK_TYPE_FILTER (e.g. Observation?category=laboratory) narrows the export: with
    # 10,000 patients and laboratory Observations only, about 1 million resources
    filters = [f"--type-filter={q}" for q in os.environ.get("BENCH_BULK_TYPE_FILTER", "").split()]
    cmd = [
        sys.executable, "-m", "jupyterhub_smart", "bulk", "export", "--fhir-url", iss,
        "--client-id", "bench-bulk", "--key", str(key), "--out", str(out),
        "--lock-dir", str(workdir / "locks"), "--json", *filters, *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _timed(
    iss: str, key: Path, out: Path, workdir: Path, *extra: str
) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    process = _export(iss, key, out, workdir, *extra)
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"export failed: {stderr.decode()[-2000:]}")
    return elapsed, orjson.loads(stdout)


def _decoded_megabytes(out: Path) -> float:
    """Size of the downloaded NDJSON once decompressed."""
    return sum(len(gzip.decompress(p.read_bytes())) for p in (out / "ndjson").glob("*/*.gz")) / 1e6


def _progress(out: Path) -> int:
    """Lines committed so far, from the export's state file (0 before it exists)."""
    try:
        state = orjson.loads((out / "export.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0
    return sum(f["lines"] for f in state["files"].values() if f["kind"] == "output")


def _convert_ours(files: list[Path], scratch: Path) -> tuple[float, float]:
    """Our convert step as the download does it: (wall, CPU) seconds.

    Each file's lines go to ``TypeConverter.lines_batch`` (the views' Arrow
    engine) in chunks of the export's default size; a chunk it hands back is
    checked line by line and converted by the closure engine, as in the export.
    """
    from jupyterhub_smart.bulk.output import TypeConverter, write_part
    from jupyterhub_smart.views.vector import Fallback

    started, cpu = time.perf_counter(), time.process_time()
    for index, path in enumerate(files):
        resource_type = path.parent.name
        converter = TypeConverter(resource_type)
        # the download's split: on b"\n", blank lines dropped (download._Chunk.lines)
        lines = list(filter(bytes.strip, gzip.decompress(path.read_bytes()).split(b"\n")))
        for start in range(0, len(lines), 5000):
            chunk = lines[start : start + 5000]
            try:
                batch = converter.lines_batch(chunk)
            except Fallback:
                resources = [(orjson.loads(line), line) for line in chunk]
                batch = converter.batch(
                    [(r, line) for r, line in resources if r.get("resourceType") == resource_type]
                )
            write_part(scratch / resource_type / f"part-{index}-{start}.parquet", batch)
    return time.perf_counter() - started, time.process_time() - cpu


def _convert_closures(files: list[Path], scratch: Path) -> tuple[float, float]:
    """The same with the closure engine only (the convert step before the Arrow engine)."""
    from jupyterhub_smart.bulk.output import TypeConverter, write_part

    started, cpu = time.perf_counter(), time.process_time()
    for index, path in enumerate(files):
        resource_type = path.parent.name
        converter = TypeConverter(resource_type)
        lines = [line for line in gzip.decompress(path.read_bytes()).splitlines() if line.strip()]
        for start in range(0, len(lines), 5000):
            chunk = [(orjson.loads(line), line) for line in lines[start : start + 5000]]
            batch = converter.batch([(r, line) for r, line in chunk if isinstance(r, dict)])
            write_part(scratch / resource_type / f"part-{index}-{start}.parquet", batch)
    return time.perf_counter() - started, time.process_time() - cpu


def _convert_pandas(files: list[Path]) -> tuple[float, float]:
    import pandas as pd

    started, cpu = time.perf_counter(), time.process_time()
    for path in files:
        pd.read_json(path, lines=True, compression="gzip")
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    from jupyterhub_smart.smart.keys import write_key_pair

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        key, jwks_path = write_key_pair("ES384", workdir / "keys")
        data_dir = Path(os.environ.get("BENCH_DATA_DIR") or workdir / "data")
        started = time.perf_counter()
        sandbox, iss = _start(workdir, data_dir, json.loads(jwks_path.read_text()))
        print(f"sandbox ready in {time.perf_counter() - started:.1f}s")
        try:
            runs = {}
            levels = [int(p) for p in os.environ.get("BENCH_BULK_PARALLEL", "1,4,8").split(",")]
            for parallel in levels:
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                elapsed, summary = _timed(
                    iss, key, workdir / f"out-{parallel}", workdir, "--parallel", str(parallel)
                )
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                count = sum(summary["resources"].values())  # type: ignore[attr-defined]
                megabytes = int(summary["bytes"]) / 1e6  # type: ignore[call-overload]
                decoded = _decoded_megabytes(workdir / f"out-{parallel}")
                runs[parallel] = elapsed
                print(
                    f"export --parallel {parallel}: {count} resources in {elapsed:.2f}s = "
                    f"{count / elapsed:,.0f} resources/s, {decoded / elapsed:.1f} MB/s of NDJSON "
                    f"({megabytes / elapsed:.2f} MB/s gzip on the wire), "
                    f"client peak RSS {max(peak, before) / 1024:.0f} MiB"
                )
            if {1, 4, 8} <= set(runs):
                print(
                    f"parallel 4 vs 1: {runs[1] / runs[4]:.2f}x faster; "
                    f"8 vs 1: {runs[1] / runs[8]:.2f}x"
                )

            fresh_level = 4 if 4 in runs else levels[-1]
            files = sorted((workdir / f"out-{fresh_level}" / "ndjson").glob("*/*.ndjson.gz"))
            ndjson_mb = sum(len(gzip.decompress(p.read_bytes())) for p in files) / 1e6
            # pyarrow imports pandas on its first pa.array() of a sequence (its pandas shim):
            # import it before either clock, as _convert_pandas does, so that neither side
            # is charged for the import (about 0.2 CPU s, counted in ours only before)
            import pandas  # noqa: F401

            ours, ours_cpu = _convert_ours(files, workdir / "convert")
            if os.environ.get("BENCH_BULK_CLOSURES", "1") == "0":  # skipped on big exports
                closures, closures_cpu = float("nan"), float("nan")
            else:
                closures, closures_cpu = _convert_closures(files, workdir / "convert-closures")
            theirs, theirs_cpu = _convert_pandas(files)
            print(
                f"convert step on {len(files)} files ({ndjson_mb:.0f} MB of NDJSON): "
                f"ours (check + built-in view on the Arrow engine + Parquet) {ours:.2f}s "
                f"({ours_cpu:.2f} CPU s, {ndjson_mb / ours:.0f} MB/s); the closure engine "
                f"{closures:.2f}s ({closures_cpu:.2f} CPU s); pandas.read_json(lines=True) (parse only) "
                f"{theirs:.2f}s ({theirs_cpu:.2f} CPU s)"
            )
            print(
                f"convert step: ours {theirs / ours:.1f}x faster than pandas (CPU "
                f"{theirs_cpu / ours_cpu:.1f}x less); {closures / ours:.1f}x faster than the "
                f"closure engine (CPU {closures_cpu / ours_cpu:.1f}x less)"
            )
            if os.environ.get("BENCH_BULK_RESUME", "1") == "0":
                return

            fresh = runs[fresh_level]
            total = sum(summary["resources"].values())  # type: ignore[attr-defined]
            out = workdir / "out-resume"
            process = _export(iss, key, out, workdir, "--parallel", "4")
            while process.poll() is None:
                lines = _progress(out)
                if lines >= 0.8 * total:
                    break
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            process.wait()
            done = _progress(out)
            resumed, _ = _timed(iss, key, out, workdir, "--resume", "--parallel", "4")
            print(
                f"resume after SIGKILL at {done / total:.0%} of the lines committed: "
                f"{resumed:.2f}s vs fresh {fresh:.2f}s ({resumed / fresh:.2f} of a fresh export)"
            )
        finally:
            sandbox.send_signal(signal.SIGTERM)
            sandbox.wait(timeout=30)


if __name__ == "__main__":
    main()
