"""How fast the sandbox generates its synthetic data set (``--patients 10000``).

Times :meth:`FHIRStore.ensure_generated` end to end (generation, JSON, inserts,
indexes, ANALYZE) into a temporary directory, then prints patients/s and
Observations/s. ``BENCH_PATIENTS`` overrides the patient count.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from jupyterhub_smart.sandbox.fhir import FHIRStore


def main() -> None:
    patients = int(os.environ.get("BENCH_PATIENTS", "10000"))
    seed = 42
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        db = Path(tmp) / "fhir.sqlite"
        store = FHIRStore(db)
        started = time.perf_counter()
        store.ensure_generated(patients=patients, seed=seed)
        elapsed = time.perf_counter() - started
        counts = store.counts()
        size = db.stat().st_size
        store.close()
    observations = counts.get("Observation", 0)
    total = sum(counts.values())
    print(f"sandbox data generation: {patients} patients, seed {seed}")
    print(f"  resources: {total:,} ({', '.join(f'{n:,} {t}' for t, n in sorted(counts.items()))})")
    print(f"  database: {size / 1e6:,.0f} MB")
    print(f"  elapsed: {elapsed:.1f} s")
    print(f"  patients/s: {patients / elapsed:,.0f}")
    print(f"  Observations/s: {observations / elapsed:,.0f}")
    print(f"  resources/s: {total / elapsed:,.0f}")


if __name__ == "__main__":
    main()
