"""Benchmarks: each measures a figure side by side with its anchor in one run, as a ratio."""
