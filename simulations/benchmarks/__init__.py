"""Benchmarks: timed runs that print numbers for the README; not tests, nothing asserts."""
