"""Benchmarks: `python -m bench.run` (or `make bench`). Loopback only, bounded in count and time."""
