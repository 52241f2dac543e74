"""Benchmarks: measured speed and memory, written to JSON (never asserted in tests)."""
