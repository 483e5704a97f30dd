"""Benchmarks of a hypkern checkout (not part of the installed package): the shared harness in
``benchmarks.harness`` and the scripts beside it. Run from the repository root."""
