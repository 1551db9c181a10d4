"""Benchmark drivers shared by the CLI and the scripts in ``benchmarks/``."""
