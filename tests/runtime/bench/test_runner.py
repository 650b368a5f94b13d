"""From runs to the payload: which reference each row is checked against, and the notes."""

from __future__ import annotations

from runtime.bench.records import BenchSettings, MethodRun, RequestRecord
from runtime.bench.runner import Plan, payload

DRAFTER = {"verifier": {"cores": [1]}, "drafter": {"cores": [0]}}


def _plan() -> Plan:
    return Plan(config_path="configs/demo.yaml", base={}, drafters={}, target_dir="t", assistant_dir=None,
                dtype=None, device="cpu", cores=[0, 1], one_core=[1], label="test")


def _run(name: str, kind: str, tokens: list[int], seconds: float) -> MethodRun:
    placement = DRAFTER if name.startswith("tandem-") else {"cores": [0, 1]}
    return MethodRun(name, kind, placement, [[RequestRecord(tokens, seconds)]])


def test_greedy_rows_are_checked_against_hf_generate() -> None:
    runs = {"hf-generate": _run("hf-generate", "peer", [1, 2], 1.0),
            "tandem-off": _run("tandem-off", "tandem", [1, 2], 0.5),
            "tandem-async-ngram": _run("tandem-async-ngram", "tandem", [1, 3], 0.25)}
    rows = {r["method"]: r for r in payload(_plan(), BenchSettings([[5]]), runs, None)["rows"]}
    assert [rows[m]["lossless"] for m in runs] == [True, True, False]
    assert rows["tandem-async-ngram"]["speedup_vs_generate"] == 4.0


def test_sampled_tandem_rows_are_checked_against_tandem_off_and_peers_not_at_all() -> None:
    runs = {"hf-generate": _run("hf-generate", "peer", [7, 7], 1.0),
            "tandem-off": _run("tandem-off", "tandem", [1, 2], 0.5),
            "tandem-sync-ngram": _run("tandem-sync-ngram", "tandem", [1, 2], 0.5)}
    settings = BenchSettings([[5]], temperature=0.8, seed=3)
    rows = {r["method"]: r for r in payload(_plan(), settings, runs, None)["rows"]}
    assert (rows["hf-generate"]["lossless"], rows["tandem-sync-ngram"]["lossless"]) == (None, True)


def test_a_faster_one_core_generate_is_pointed_out() -> None:
    runs = {"hf-generate": _run("hf-generate", "peer", [1, 2], 1.0),
            "hf-generate (1 core)": _run("hf-generate (1 core)", "peer", [1, 2], 0.5)}
    notes = payload(_plan(), BenchSettings([[5]]), runs, None)["notes"]
    assert len(notes) == 1 and "faster on 1 core than on 2" in notes[0]
    del runs["hf-generate (1 core)"]
    assert payload(_plan(), BenchSettings([[5]]), runs, None)["notes"] == []


def test_a_lossy_variant_is_marked_lossy_not_compared() -> None:
    runs = {"hf-generate": _run("hf-generate", "peer", [1, 2], 1.0),
            "tandem-async-falcon-cand3": _run("tandem-async-falcon-cand3", "tandem", [1, 3], 0.5)}
    rows = {r["method"]: r for r in payload(_plan(), BenchSettings([[5]]), runs, None)["rows"]}
    assert rows["tandem-async-falcon-cand3"]["lossless"] is None and rows["tandem-async-falcon-cand3"]["lossy"]
    assert "lossy" not in rows["hf-generate"]
