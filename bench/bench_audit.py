"""Audit writer throughput and the latency it adds to a login.

Durability is on in every AuditLog mode measured here: ``record()`` returns
only after the line is fsynced. Side by side:

* fsync per event (``group_commit=False``): one write + fdatasync per event;
* group commit (the default): concurrent events share one fdatasync;
* reference: Python ``logging`` to a file (what JupyterHub's own log does):
  no fsync, no chain, so *not* durable: the price of the guarantee.

Latency per login: a login records about two events (``launch-received`` and
``login-succeeded``) one after the other; we time that pair on an idle log.

Build + sanitize: the CPU the hub spends per event before the writer thread
sees it (``hub_event``/``data_access_event`` then ``sanitize``), on one core,
no disk: events the hub builds itself, and the same events as plain dicts
(what any other caller hands in, which gets the full walk).

Run: ``python -m bench audit`` (or ``python -m bench.bench_audit``).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from jupyterhub_smart.audit import AuditLog, data_access_event, hub_event, sanitize

CONCURRENCY = 64
SECONDS = 2.0


def _event(i: int) -> dict:
    return hub_event(
        "token-issued",
        username=f"user{i % 50}",
        fhir_user=f"Practitioner/{i % 50}",
        patient=f"Patient/{i % 500}",
        issuer="https://ehr.example/fhir",
        scopes_granted=["openid", "fhirUser", "launch", "patient/*.rs"],
        client_address="10.0.0.1",
        user_agent="Mozilla/5.0",
        token_hash="ab" * 32,
        server_name="",
    )


def _data_access(i: int) -> dict:
    return data_access_event(
        interaction="search-type",
        resource_type="Observation",
        search_params=["patient", "code", "_count", "_sort"],
        count=50,
        status=200,
        patient=f"patient-{i % 500:05d}",
        username=f"user{i % 50}",
        fhir_user=f"Practitioner/{i % 50}",
        server_name="",
        issuer="https://ehr.example/fhir",
        client_address="10.0.0.1",
        user_agent="jupyterhub-smart-notebook",
    )


def _plain(event: dict) -> dict:
    """The same content as a plain dict (no builder's seal): what sanitize walks in full."""
    return orjson.loads(orjson.dumps(event))


def build_and_sanitize(seconds: float = 1.0) -> dict[str, float]:
    """Events/s of build+sanitize (hub_event, data_access_event) and of sanitize on plain dicts."""
    rates: dict[str, float] = {}
    for name, build in (("hub_event", _event), ("data_access_event", _data_access)):
        done, stop = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < stop:
            for i in range(done, done + 200):
                sanitize(build(i))
            done += 200
        rates[name] = done / (time.perf_counter() - start)
        plain = [_plain(build(i)) for i in range(200)]
        done, stop = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < stop:
            for event in plain:
                sanitize(event)
            done += 200
        rates[f"{name}, plain dict (full walk)"] = done / (time.perf_counter() - start)
    return rates


async def _throughput(log: AuditLog, seconds: float, concurrency: int) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < stop:
            await log.record(_event(i))
            done += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - start)


def measure(directory: Path, group_commit: bool) -> float:
    log = AuditLog(directory / f"audit-{group_commit}.jsonl", group_commit=group_commit)
    try:
        return asyncio.run(_throughput(log, SECONDS, CONCURRENCY))
    finally:
        log.close()


def measure_logging(directory: Path) -> float:
    logger = logging.getLogger("bench.audit.reference")
    logger.propagate = False
    handler = logging.FileHandler(directory / "reference.log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    done, stop = 0, time.perf_counter() + SECONDS
    start = time.perf_counter()
    while time.perf_counter() < stop:
        logger.info(orjson.dumps(_event(done)).decode())
        done += 1
    elapsed = time.perf_counter() - start
    handler.close()
    logger.removeHandler(handler)
    return done / elapsed


def login_latency(directory: Path, logins: int = 200) -> tuple[float, float]:
    log = AuditLog(directory / "latency.jsonl")

    async def run() -> list[float]:
        samples = []
        for i in range(logins):
            start = time.perf_counter()
            await log.record(hub_event("launch-received", issuer="https://ehr.example/fhir"))
            await log.record(_event(i))
            samples.append((time.perf_counter() - start) * 1000)
        return samples

    try:
        samples = asyncio.run(run())
    finally:
        log.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    rates = build_and_sanitize()
    print("build + sanitize, one core, no disk:")
    for name, rate in rates.items():
        print(f"  {name:45s}: {rate:10.0f} events/s")
    with tempfile.TemporaryDirectory(prefix="bench-audit-", dir=Path.home()) as tmp:
        directory = Path(tmp)
        per_event = measure(directory, group_commit=False)
        grouped = measure(directory, group_commit=True)
        reference = measure_logging(directory)
        p50, p99 = login_latency(directory)
    print(f"audit writer, durable (fdatasync before ack), {CONCURRENCY} concurrent writers:")
    print(f"  fsync per event : {per_event:10.0f} events/s")
    print(f"  group commit    : {grouped:10.0f} events/s  ({grouped / per_event:.1f}x per-event)")
    print(f"  reference, python logging to a file (NOT durable, no chain): {reference:.0f} lines/s")
    print(
        f"added latency per login (2 durable events, idle log): p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


if __name__ == "__main__":
    main()
