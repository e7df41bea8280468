"""Benchmarks. Each writes its figures and the command that produced them into BENCHMARKS.md."""
