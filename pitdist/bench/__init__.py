"""Benchmarks run as `pitdist bench ...` (sp: what Ulysses sequence parallelism buys)."""
