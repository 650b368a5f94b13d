"""The tree shapes the cost picture verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.bench.costs import bushy, chain, forward_costs
from tests.models import tiny_model
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel


def test_chain_is_one_node_per_level() -> None:
    tree = chain(8)
    assert (tree.num_nodes, tree.max_depth) == (8, 8)
    assert chain(0).num_nodes == 0


def test_bushy_tree_has_four_children_per_node_breadth_first() -> None:
    tree = bushy(20)  # 4 at depth 1, 16 at depth 2
    assert tree.num_nodes == 20 and tree.max_depth == 2
    assert tree.parents[:4].tolist() == [-1] * 4
    assert tree.parents[4:8].tolist() == [0] * 4 and tree.parents[16:20].tolist() == [3] * 4
    assert bushy(21).max_depth == 3


def test_forward_costs_time_every_model_at_every_size_on_the_cached_context(tmp_path: Path) -> None:
    target = tiny_model("llama", num_layers=4)
    target.save_pretrained(tmp_path / "target")
    FalconDrafterModel(FalconConfig.from_target_config(target.config, num_layers=1),
                       target.get_input_embeddings().weight.detach(),
                       target.get_output_embeddings().weight.detach()).save(tmp_path / "falcon")
    tiny_model("llama", seed=1, num_layers=1).save_pretrained(tmp_path / "draft")
    rows = forward_costs(str(tmp_path / "target"), str(tmp_path / "falcon"), str(tmp_path / "draft"),
                         list(range(3, 43)), repeats=2, positions=(1, 4))
    assert [(r["model"], r["positions"]) for r in rows] == [
        ("target", 1), ("falcon", 1), ("AR draft", 1), ("target", 4), ("falcon", 4), ("AR draft", 4)]
    for base, *drafters in (rows[:3], rows[3:]):
        assert all(r["ms"] > 0 for r in (base, *drafters))
        for row in drafters:
            assert row["ratio_to_target"] == pytest.approx(row["ms"] / base["ms"])
