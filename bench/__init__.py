"""Benchmarks: each prints its figures next to its baseline; results are recorded in docs/benchmarks.md."""
