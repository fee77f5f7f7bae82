"""Benchmarks: commands that print figures (written up in docs/benchmarks.md), never timed tests."""
