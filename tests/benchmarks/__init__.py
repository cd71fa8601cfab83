"""Tests of the benchmarks' own pure parts (data sources, statistics)."""
