"""Benchmark suite for lifepool (run ``python benchmarks/bench.py``; not part of the tests)."""
