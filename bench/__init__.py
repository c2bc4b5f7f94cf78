"""Benchmarks: each ``bench_*.py`` measures ours against the peers its issue names."""
