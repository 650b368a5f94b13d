"""Method names, method selection and the YAML variants the bench writes for each Tandem method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.bench import tandem
from runtime.bench.runner import all_methods, select_methods
from runtime.config import REPO_ROOT, TandemConfig


def test_method_names_round_trip() -> None:
    assert tandem.method_name("async", "falcon") == "tandem-async-falcon"
    assert tandem.parse_method("tandem-async-falcon") == ("async", "falcon")
    assert tandem.parse_method("tandem-off") == ("off", None)
    for bad in ("tandem-fast-falcon", "hf-generate", "tandem-sync", "tandem-off-ngram"):
        with pytest.raises(ValueError, match="not a Tandem method"):
            tandem.parse_method(bad)


def test_all_methods_and_selection() -> None:
    names = all_methods(("falcon", "ngram"), ("hf-generate", "hf-assisted"), one_core=True)
    assert names == ["hf-generate", "hf-generate (1 core)", "hf-assisted", "hf-assisted (1 core)", "tandem-off",
                     "tandem-sync-falcon", "tandem-async-falcon", "tandem-sync-ngram", "tandem-async-ngram",
                     "tandem-async-hidden", "tandem-async-falcon-hidden", "tandem-async-falcon-cand3"]
    assert select_methods("tandem-async-falcon*", names) == ["hf-generate", "tandem-async-falcon",
                                                             "tandem-async-falcon-hidden", "tandem-async-falcon-cand3"]
    assert "tandem-async-falcon-cand3" not in all_methods(("ngram",), ("hf-generate",), one_core=False)
    assert select_methods(None, names) == names
    with pytest.raises(ValueError, match="'medusa' matches no method"):
        select_methods("tandem-off,medusa", names)


@pytest.mark.parametrize("kind", ["ngram", "model", "oracle"])
def test_variant_is_a_valid_config_on_fresh_ports(tmp_path: Path, kind: str) -> None:
    base = tandem.base_data(str(REPO_ROOT / "configs" / "demo.yaml"))
    keys_by_kind: dict[str, dict[str, Any]] = {
        "ngram": {}, "model": {"model": str(REPO_ROOT / "models/demo/draft")},
        "oracle": {"oracle_reference": str(tmp_path / "ref.json"), "oracle_accept_prob": 0.7}}
    drafter = tandem.drafter_section(base, kind, keys_by_kind[kind])
    path = tandem.write_variant(base, tmp_path, f"tandem-sync-{kind}", "sync", drafter, max_new_tokens=2000)
    config = TandemConfig.load(path)
    demo = TandemConfig.load(REPO_ROOT / "configs" / "demo.yaml")
    assert config.speculation.mode == "sync" and config.drafter is not None and config.drafter.kind == kind
    assert config.drafter.cpu_affinity == demo.drafter.cpu_affinity if demo.drafter else False
    assert config.verifier.model == demo.verifier.model
    assert config.coordinator.client_address != demo.coordinator.client_address
    assert config.limits.max_new_tokens == 2000
    assert (config.limits.max_running_per_verifier, config.limits.max_queued_requests) == (32, 256)  # defaults


def test_load_variant_lets_every_request_of_a_level_run_at_once(tmp_path: Path) -> None:
    base = tandem.base_data(str(REPO_ROOT / "configs" / "demo.yaml"))
    path = tandem.write_variant(base, tmp_path, "tandem-off", "off", None, 16, concurrency=300)
    limits = TandemConfig.load(path).limits
    assert (limits.max_running_per_verifier, limits.max_queued_requests) == (300, 300)


def test_off_variant_has_no_drafter(tmp_path: Path) -> None:
    base = tandem.base_data(str(REPO_ROOT / "configs" / "demo.yaml"))
    config = TandemConfig.load(tandem.write_variant(base, tmp_path, "tandem-off", "off", None, 16))
    assert config.drafter is None and not config.uses_drafter
    assert config.verifier.cpu_affinity == (0, 1) and config.verifier.num_threads == 2  # the drafter's core too


@pytest.mark.parametrize(("kind", "mode", "cores"), [("ngram", "async", (0, 1)), ("falcon", "async", (1,)),
                                                     ("falcon", "off", (0, 1))])
def test_a_drafter_without_a_model_leaves_its_cores_to_the_verifier(kind: str, mode: str,
                                                                    cores: tuple[int, ...]) -> None:
    verifier = {"model": "m", "cpu_affinity": [1], "num_threads": 1}
    placed = tandem.with_free_cores(verifier, {"kind": "falcon", "cpu_affinity": [0]}, mode, {"kind": kind})
    assert tuple(placed["cpu_affinity"]) == cores and placed["num_threads"] == len(cores)
    on_gpu = tandem.with_free_cores({**verifier, "device": "cuda:0"}, {"cpu_affinity": [0]}, "off", None)
    assert on_gpu["cpu_affinity"] == [1]  # a GPU verifier keeps its placement


def test_tracing_sets_the_folder_for_child_processes_and_restores_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from protocol.trace import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    with tandem.tracing(tmp_path):
        assert os.environ[ENV_VAR] == str(tmp_path)
    assert ENV_VAR not in os.environ
    monkeypatch.setenv(ENV_VAR, "/elsewhere")
    with tandem.tracing(None):
        assert os.environ[ENV_VAR] == "/elsewhere"
    with tandem.tracing(tmp_path):
        assert os.environ[ENV_VAR] == str(tmp_path)
    assert os.environ[ENV_VAR] == "/elsewhere"


def test_variant_sections_are_merged_into_the_method_config(tmp_path: Path) -> None:
    base = tandem.base_data(str(REPO_ROOT / "configs/demo.yaml"))
    kind, sections, is_lossy = tandem.VARIANTS["falcon-cand3"]
    drafter = tandem.drafter_section(base, "falcon", {"model": str(REPO_ROOT / "models/demo/falcon")})
    path = tandem.write_variant(base, tmp_path, "tandem-async-falcon-cand3", "async", drafter, 64, sections=sections)
    config = TandemConfig.load(str(path))
    assert (kind, is_lossy) == ("falcon", True)
    assert config.speculation.target_candidates == 3 and config.speculation.mode == "async"
    assert config.speculation.tree == TandemConfig.load(str(REPO_ROOT / "configs/demo.yaml")).speculation.tree
    assert "target_candidates" not in base["speculation"]  # the base is not changed
