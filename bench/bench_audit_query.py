"""Index build rate and query latency of ``audit query`` over a large log.

The log is generated through the real writer (:class:`AuditLog`, hash chain,
rotation at 64 MB, group commit) once and cached in the temporary directory,
keyed by the event count: logins and notebook FHIR requests by 2,000 users
over 50,000 patients. Then:

* **index build**: a fresh SQLite index over every file, with the chain
  checked line by line (goal: >= 200k events/s);
* **query**: what ``audit query --patient`` / ``--user`` does each time
  (bring the index up to date, which checks the indexed files and the live
  tail; select; read every matching line back and check its hash; parse),
  p50 and p95 over 20 patients and 20 users (goal: p50 < 200 ms);
* **peer**: the same patient question answered by a full verified scan
  (``audit verify``'s reader filtering as it goes), timed on the first file and
  scaled to the whole log, so the ratio shows what the index buys.

Run: ``python -m bench audit_query`` (10 million events; the first run spends
some minutes writing them) or ``python -m bench.bench_audit_query --events 500000``.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event
from jupyterhub_smart.audit.index import AuditIndex, log_files, row_of
from jupyterhub_smart.audit.query import ROW_FIELDS, Filters, search
from jupyterhub_smart.audit.verify import iter_verified, verify

USERS = 2_000
PATIENTS = 50_000
ISS = "https://ehr.example.org/fhir"
#: Bytes one generated event takes in the log (measured: ~1.7 kB a line).
BYTES_PER_EVENT = 1800
TYPES = ("Observation", "Condition", "MedicationRequest", "Encounter", "Patient")


def _events(start: int, n: int) -> list[dict]:
    rng = random.Random(start)
    out = []
    for i in range(start, start + n):
        user = rng.randrange(USERS)
        patient = f"Patient/p{rng.randrange(PATIENTS)}"
        if i % 20 == 0:
            out.append(
                hub_event(
                    "login-succeeded",
                    username=f"practitioner-{user}@ehr",
                    fhir_user=f"Practitioner/{user}",
                    issuer=ISS,
                    patient=patient,
                    client_address=f"10.0.{user % 250}.{user % 200}",
                    scopes_granted=["openid", "fhirUser", "launch", "patient/*.rs"],
                )
            )
        else:
            out.append(
                data_access_event(
                    interaction="search-type",
                    resource_type=TYPES[i % len(TYPES)],
                    search_params=["patient", "code"],
                    count=rng.randrange(50),
                    status=200,
                    username=f"practitioner-{user}@ehr",
                    fhir_user=f"Practitioner/{user}",
                    server_name="",
                    issuer=ISS,
                    patient=patient,
                    client_address="10.0.0.1",
                )
            )
    return out


def generate(directory: Path, total: int) -> Path:
    """The cached log of ``total`` events (written through the real writer on first use).

    The events come from a pool of 20,000 built once by the real builders (each
    vetted, as the hub's are) and are submitted in random order, 1,000 in flight:
    building every event anew costs the builders' vetting (~60 us an event) on the
    same interpreter as the writer, and submitting 20,000 at a time kept so many
    objects alive that the garbage collector's full passes dominated (the writer
    then seemed to make ~670 events/s).
    """
    path = directory / "audit.jsonl"
    done = directory / "complete"
    if done.exists():
        return path
    need = total * BYTES_PER_EVENT * 1.3  # the log, and the index beside it
    free = shutil.disk_usage(directory.parent).free
    if free < need:
        raise SystemExit(
            f"bench audit_query: {total:,} events need about {need / 1e9:.0f} GB in "
            f"{directory.parent}, {free / 1e9:.0f} GB free; use --events or --cache"
        )
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    pool = _events(0, 20_000)
    gc.freeze()  # the pool lives to the end: keep it out of the collector's passes
    rng = random.Random(total)
    started = time.perf_counter()
    cpu = time.process_time()
    step = 1_000
    with AuditLog(path) as log:
        waiting = None
        for start in range(0, total, step):
            n = min(step, total - start)
            futures = [log.submit(pool[rng.randrange(len(pool))]) for _ in range(n)]
            if waiting is not None:
                waiting.result()
            waiting = futures[-1]
            if start and start % 1_000_000 == 0:
                print(f"  generated {start:,} events", flush=True)
        if waiting is not None:
            waiting.result()
    done.write_text(str(total))
    elapsed = time.perf_counter() - started
    print(
        f"generated {total:,} events in {elapsed:.0f} s ({total / elapsed:,.0f}/s through the "
        f"writer, {(time.process_time() - cpu) / total * 1e6:.0f} us CPU an event for caller "
        f"and writer; load average {os.getloadavg()[0]:.1f})"
    )
    return path


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (the index's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _query_ms(path: Path, index_path: Path, filters: Filters) -> tuple[float, int]:
    started = time.perf_counter()
    with AuditIndex(path, index_path) as index:
        index.update()
        n = sum(1 for _ in search(index, filters))
    return (time.perf_counter() - started) * 1000, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the log")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="directory for the generated log (default: a folder in the temp dir, kept)",
    )
    parser.add_argument(
        "--skip-verify", action="store_true", help="leave out the audit verify timings"
    )
    args = parser.parse_args()
    cache = (
        args.cache or Path(tempfile.gettempdir()) / f"jupyterhub-smart-bench-audit-{args.events}"
    )
    path = generate(cache, args.events)
    files = log_files(path)
    size = sum(f.stat().st_size for f in files)
    print(f"log: {args.events:,} events, {len(files)} files, {size / 1e9:.2f} GB in {cache}")

    # audit verify over the whole log: one process, then the per-line checks in workers.
    workers = max(2, os.cpu_count() or 1)
    rates = {}
    for n in () if args.skip_verify else (1, workers):
        started = time.perf_counter()
        report = verify([path], workers=n)
        rates[n] = report.records / (time.perf_counter() - started)
    if rates:
        print(
            f"audit verify: {rates[1]:,.0f} events/s in one process, {rates[workers]:,.0f} "
            f"events/s with {workers} workers ({rates[workers] / rates[1]:.2f}x; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
        )

    index_path = cache / "bench.index.sqlite"
    for stale in cache.glob("bench.index.sqlite*"):
        stale.unlink()
    started = time.perf_counter()
    cpu = _cpu_seconds()
    with AuditIndex(path, index_path) as index:
        added = index.update()
    build = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    rate = added / build
    print(
        f"index build (each line hashed and chained to the one before, the filter columns "
        f"extracted, rows stored; the full per-line self-hash check is audit verify's): "
        f"{added:,} events in {build:.1f} s = {rate:,.0f} events/s, "
        f"{cpu / added * 1e6:.1f} us CPU an event (this process and its {index.workers_used} "
        "worker processes) "
        f"(goal >= 200,000: {'met' if rate >= 200_000 else 'NOT met'}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); "
        f"index {index_path.stat().st_size / 1e9:.2f} GB"
    )

    # Patients and users the log holds (the events come from a pool of 20,000).
    rng = random.Random(7)
    columns = zip(*(row_of(e) for e in _events(0, 20_000)), strict=True)
    row = dict(zip(ROW_FIELDS, columns, strict=True))
    patients = sorted({p for p in row["patient"] if p})
    users = sorted({u for u in row["user"] if u})
    results = {}
    for label, make in (
        ("patient", lambda: Filters(patient=rng.choice(patients))),
        ("user", lambda: Filters(user=rng.choice(users))),
    ):
        times, rows = [], []
        for _ in range(20):
            ms, n = _query_ms(path, index_path, make())
            times.append(ms)
            rows.append(n)
        p50 = statistics.median(times)
        p95 = sorted(times)[int(0.95 * len(times)) - 1]
        results[label] = p50
        print(
            f"query one {label}: p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
            f"{statistics.median(rows):.0f} records each "
            f"(goal p50 < 200 ms: {'met' if p50 < 200 else 'NOT met'})"
        )

    # Peer: the verified full scan, over the first file, scaled to the log.
    rotated = sorted(f for f in files if f != path)
    first = rotated[0] if rotated else path
    target = "Patient/p1"
    started = time.perf_counter()
    scanned = 0
    hits = 0
    for entry in iter_verified([first]):
        scanned += 1
        hits += any(
            (e.get("what") or {}).get("reference") == target for e in entry.record.get("entity", ())
        )
    scan = time.perf_counter() - started
    full_ms = scan / scanned * args.events * 1000
    print(
        f"peer, verified full scan for one patient: {scanned / scan:,.0f} events/s, "
        f"{full_ms / 1000:.1f} s for the whole log (indexed query {full_ms / results['patient']:,.0f}"
        "x faster)"
    )


if __name__ == "__main__":
    main()
