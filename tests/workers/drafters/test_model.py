"""Small-model drafter: tree drafting through its own cache, re-root and rollback stay exact."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from protocol.errors import ModelMismatchError
from tests.models import tiny_model
from workers.drafters.model import ModelDrafter, ModelSession
from workers.tree_policy import TreeConfig

CONFIG = TreeConfig(total_tokens=12, depth=4, top_k=3)


def next_distribution(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)


def assert_probs_exact(model: Any, session: ModelSession) -> None:
    """Every node's probability equals a full forward over committed tokens + its path."""
    tree, anc = session.tree, session.tree.ancestors()
    assert tree.num_nodes > 0
    for i in range(tree.num_nodes):
        parent = int(tree.parents[i])
        context = session.committed_ids + ([] if parent < 0 else tree.token_ids[anc[parent]].tolist())
        expected = next_distribution(model, context)[int(tree.token_ids[i])]
        assert abs(float(tree.probs[i]) - float(expected)) < 1e-5, f"node {i} at depth {int(tree.depths[i])}"


def test_node_probabilities_equal_full_forward() -> None:
    model = tiny_model("llama", seed=3)
    session = ModelDrafter(model).open([5, 6, 7, 8], CONFIG)
    assert isinstance(session, ModelSession)
    session.draft()
    assert session.tree.max_depth >= 2
    assert_probs_exact(model, session)


def _commit_tokens(session: ModelSession, commit: list[int]) -> list[int]:
    """-1 takes the drafter's most likely child, so the commit follows the living tree."""
    tokens: list[int] = []
    for t in commit:
        path = session.tree.follow(tokens)
        if t < 0 and len(path) == len(tokens):
            children = session.tree.children(path[-1] if path else -1)
            if children.numel():
                tokens.append(int(session.tree.token_ids[children[0]]))
                continue
        tokens.append(max(t, 3))
    return tokens


@pytest.mark.parametrize("commits", [
    [[9]],  # miss: nothing accepted
    [[-1, -1]],  # hit: follow the drafted best path, bonus inside the tree
    [[-1, 11], [-1, -1, -1], [12], [-1, -1]],  # mixed rounds
])
def test_after_commits_drafts_equal_a_fresh_session(commits: list[list[int]]) -> None:
    model = tiny_model("llama", seed=4)
    drafter = ModelDrafter(model)
    session = drafter.open([5, 6, 7, 8], CONFIG)
    assert isinstance(session, ModelSession)
    for commit in commits:
        session.draft()
        session.commit(_commit_tokens(session, commit))
    session.draft()
    assert_probs_exact(model, session)  # cache entries kept across re-roots and rollbacks are exact


def test_vocab_mismatch_names_both_sides() -> None:
    drafter = ModelDrafter(tiny_model("llama", vocab_size=80))
    with pytest.raises(ModelMismatchError, match=r"80.*96"):
        drafter.check_target(96, 64)


def test_a_full_living_tree_prunes_and_grows_on_with_exact_probabilities() -> None:
    """At the cap the session drops its least likely leaves and keeps growing (`tree.prune_living`); every
    node's probability still equals a full forward of its path, so the cache followed the prune."""
    model = tiny_model("llama", seed=3)
    with torch.no_grad():  # a confident drafter: a flat one never finds an expansion worth what it drops
        model.lm_head.weight.mul_(6.0)
    config = TreeConfig(total_tokens=4, depth=6, top_k=3, max_living_nodes=16, prune_living=True)
    session = ModelDrafter(model).open([5, 6, 7, 8], config)
    assert isinstance(session, ModelSession)
    while session.grow():
        pass
    full = session.tree.num_nodes
    assert full >= config.living_cap
    num_prunes = 0
    for _ in range(4):
        if not session.make_room():
            break
        num_prunes += 1
        assert session.tree.num_nodes < full
        assert session.grow()
        full = session.tree.num_nodes
    assert num_prunes >= 1
    assert_probs_exact(model, session)
