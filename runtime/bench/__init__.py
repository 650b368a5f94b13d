"""The benchmark: Tandem's modes and drafters against the peers a user would pick instead.

`scripts/bench.py` is the entry point; `runtime.bench.cli` parses its options and `runner` drives
the methods (`peers`, `tandem`), whose numbers `metrics` reduces and `report` writes. The load mode
(`--concurrency`): `load` drives `load_peers` and `load_tandem` level by level, `load_metrics` and
`load_report` reduce and write, `load_plots` draws. Method and reproduction: docs/performance.md.
"""
