"""The benchmark: Tandem's modes and drafters against the peers a user would pick instead.

`scripts/bench.py` is the entry point; `runtime.bench.cli` parses its options and `runner` drives
the methods (`peers`, `tandem`), whose numbers `metrics` reduces and `report` writes. Method and
reproduction: docs/performance.md.
"""
