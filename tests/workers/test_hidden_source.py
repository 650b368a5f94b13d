"""Hidden Transfer's pure parts: which entries get slots, the tree the guesses make, the slot masks, and
the maps' files."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models import tiny_model
from workers.batch_mask import Row
from workers.hidden_source import (
    EXPLORE_EVERY,
    HiddenSource,
    HiddenState,
    best_anchors,
    choose_num_anchors,
    last_accepted_probs,
    tree_from_guesses,
)
from workers.hidden_transfer import CONFIG_FILE, HiddenConfig, TransferMaps
from workers.pseudo_mask import pseudo_plan, training_mask
from workers.tree import ROOT, DraftTree


def test_last_accepted_probabilities_sum_to_one() -> None:
    # root -> a (0.8) -> c (0.5); root -> b (0.1)
    tree = DraftTree.from_lists([5, 6, 7], [ROOT, ROOT, 0], [0.8, 0.1, 0.6])
    probs = last_accepted_probs(tree, torch.tensor([0.8, 0.1, 0.5]))
    assert torch.allclose(probs, torch.tensor([0.1, 0.3, 0.1, 0.5], dtype=torch.float64))
    assert float(probs.sum()) == pytest.approx(1.0)
    assert best_anchors(probs, 2) == (3, 1)
    assert best_anchors(torch.tensor([0.2, 0.2, 0.1]), 2) == (0, 1)  # ties to the lower entry


def test_number_of_anchors_follows_the_cost() -> None:
    values = [[0.6, 0.2, 0.1]]
    flat = [1.0] * 40  # slots cost nothing (a GPU below its width): buy every anchor worth anything
    assert choose_num_anchors([2.0], values, flat, width=5, slot_columns=2.0) == 3
    steep = [1.0 + 0.1 * w for w in range(40)]  # each column costs 10% of a step (a CPU): the first only
    assert choose_num_anchors([2.0], values, steep, width=5, slot_columns=2.0) == 1
    assert choose_num_anchors([2.0], [[0.05]], steep, width=5, slot_columns=2.0) == 0
    assert choose_num_anchors([2.0], values, steep[:6], width=5, slot_columns=2.0) == 1  # past the table: linear


def test_choose_explores_after_a_run_without_slots() -> None:
    model = tiny_model("llama", num_layers=3)
    source = HiddenSource(TransferMaps(HiddenConfig.for_target(model.config, 1, 2)), 3)
    state = HiddenState(gain=0.0)  # guesses never helped: no anchor is worth its cost
    tree = DraftTree.from_lists([5], [ROOT], [0.5])
    costs = [1.0 + w for w in range(20)]
    picks = [source.choose([state], [tree], [torch.tensor([0.5])], costs, [True])[0] for _ in range(EXPLORE_EVERY)]
    assert picks[:-1] == [()] * (EXPLORE_EVERY - 1) and len(picks[-1]) == 1
    assert source.choose([state], [tree], [torch.tensor([0.5])], costs, [False]) == [()]  # mode off: never


def test_guess_tree_is_the_best_paths_of_the_product() -> None:
    logits = torch.full((2, 10), -30.0)
    logits[0, [1, 2, 3]] = torch.log(torch.tensor([0.6, 0.3, 0.1]))  # offset 0: depth 1
    logits[1, [4, 5]] = torch.log(torch.tensor([0.7, 0.3]))
    tree = tree_from_guesses(logits, max_nodes=5, top_k=2)
    paths = {tuple(tree.token_ids[tree.ancestors()[i]].tolist()): float(tree.path_probs()[i])
             for i in range(tree.num_nodes)}
    assert set(paths) == {(1,), (2,), (1, 4), (1, 5), (2, 4)}  # 0.6, 0.3, 0.42, 0.18, 0.21 (> 0.3 * 0.3)
    assert paths[(1, 4)] == pytest.approx(0.42, abs=1e-4)
    assert bool((tree.parents < torch.arange(tree.num_nodes)).all())


def test_slot_mask_and_positions_by_hand() -> None:
    # row: root + chain a -> b and a sibling c of a; anchors: b (entry 2) and the root, k = 2
    tree = DraftTree.from_lists([7, 8, 9], [ROOT, 0, ROOT], [0.5] * 3)
    row = Row.tree(3, tree)
    start, width = 4, 4  # prefix of 4 cached entries; the real row padded to 4
    plan = pseudo_plan([row], [start], [(2, 0)], 2, width, start + width + 4, torch.float32)
    visible = plan.mask[0, 0] == 0  # [4 slots, 12 keys]
    assert plan.positions.tolist() == [[7, 8, 5, 6]]  # b sits at 4 + 2; the root at 4
    prefix, real, slots = visible[:, :4], visible[:, 4:8], visible[:, 8:]
    assert bool(prefix.all())
    assert real.tolist() == [[True, True, True, False]] * 2 + [[True, False, False, False]] * 2
    assert slots.tolist() == [[True, False, False, False], [True, True, False, False],
                              [False, False, True, False], [False, False, True, True]]
    assert training_mask(3, 2)[3].tolist() == [True, True, False, False, False, True, True, False, False]


def test_maps_save_load_and_target_check(tmp_path: object) -> None:
    model = tiny_model("llama", num_layers=3)
    config = HiddenConfig.for_target(model.config, 2, 3, "tiny")
    maps = TransferMaps(config)
    with torch.no_grad():
        maps.proj.weight.normal_()
    maps.save(tmp_path, torch.float32)  # type: ignore[arg-type]
    loaded = TransferMaps.load(tmp_path)  # type: ignore[arg-type]
    assert loaded.config == config and torch.equal(loaded.proj.weight, maps.proj.weight)
    hidden = torch.randn(5, 64)
    assert torch.equal(loaded(hidden), maps(hidden)) and maps(hidden).shape == (5, 3, 64)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["layer"] == 2  # type: ignore[operator]
    config.check_target(model.config)
    with pytest.raises(ValueError, match="hidden_size 64 \\(target: 32\\)"):
        config.check_target(tiny_model("llama", hidden_size=32).config)
    with pytest.raises(ValueError, match="layer"):
        HiddenConfig(3, 2, 64, 3, 96)  # the slots must pass at least one layer
    fresh = TransferMaps(config)
    assert torch.equal(fresh(hidden)[:, 1], hidden)  # identity start: a slot starts as its node's state
