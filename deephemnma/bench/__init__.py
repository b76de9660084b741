"""Benchmarks: ``deephemnma bench NAME`` runs ``deephemnma.bench.NAME`` and prints one JSON line last."""
