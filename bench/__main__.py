"""Run every benchmark (``make bench``), or the ones named: ``python -m bench sandbox_pages``.

Each ``bench/bench_*.py`` is a script with a ``main() -> None`` that starts what it
needs (a sandbox process, a hub), measures ours and the peers side by side in one run,
and prints its figures and ratios. They run one after another in fresh
interpreters so that one benchmark's memory and threads never skew the next.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failures = 0
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        result = subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], cwd=HERE.parent)
        failures += result.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
