"""Benchmarks. Each writes its figures and the command that produced them into BENCHMARKS.md."""

import strategies  # noqa: E402,F401 - before any benchmark imports transformers (strategies/avalanche_env.py)
