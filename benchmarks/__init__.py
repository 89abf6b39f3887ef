"""Benchmarks of dwconv: per-op kernel timings (kernels.py) and model throughput (throughput.py).

Run them as scripts from the repository root (`python benchmarks/kernels.py --help`); see
docs/benchmarking.md.
"""
