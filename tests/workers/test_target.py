"""Target verifier: tree masks give path logits, KV compaction and rollback keep the cache exact."""

from __future__ import annotations

import pytest
import torch

from protocol.errors import ProtocolError, RequestError
from tests.models import layer_kv, tiny_model
from workers.target import TargetVerifier, VerifierState
from workers.tree import ROOT, DraftTree


def random_tree(num_nodes: int, vocab: int, seed: int) -> DraftTree:
    gen = torch.Generator().manual_seed(seed)
    parents = [ROOT]
    for i in range(1, num_nodes):
        parents.append(int(torch.randint(-1, i, (1,), generator=gen)))
    tokens = torch.randint(0, vocab, (num_nodes,), generator=gen).tolist()
    return DraftTree.from_lists(tokens, parents, [0.5] * num_nodes)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tree_node_logits_equal_path_logits(arch: str, attn: str) -> None:
    extra = {"sliding_window": 12} if arch == "mistral" else {}  # prefix 30 > window: the window is exercised
    model = tiny_model(arch, attn=attn, **extra)
    verifier = TargetVerifier(model)
    state = VerifierState()
    prompt = torch.randint(3, 96, (30,), generator=torch.Generator().manual_seed(1)).tolist()
    verifier.prefill(state, prompt)
    tree = random_tree(20, 96, seed=2)
    logits, hidden = verifier.verify(state, 7, tree)
    anc = tree.ancestors()
    paths = [[7]] + [[7, *tree.token_ids[anc[i]].tolist()] for i in range(tree.num_nodes)]
    with torch.no_grad():
        for row, path in enumerate(paths):
            out = model(torch.tensor([prompt + path]), output_hidden_states=True)
            assert torch.allclose(out.logits[0, -1], logits[row], atol=1e-5), f"node {row - 1} differs"
            assert torch.allclose(out.hidden_states[-1][0, -1], hidden[row], atol=1e-5)


def fresh_cache_keys(model: object, ids: list[int]) -> list[torch.Tensor]:
    verifier = TargetVerifier(model)
    state = VerifierState()
    verifier.prefill(state, ids)
    return [layer_kv(layer)[0].clone() for layer in state.cache.layers]


@pytest.mark.parametrize("accepted", [[], [0], [0, 2, 5]])
def test_compaction_matches_fresh_prefill(accepted: list[int]) -> None:
    model = tiny_model("llama")
    verifier = TargetVerifier(model)
    state = VerifierState()
    prompt = [5, 6, 7, 8, 9]
    committed = [*prompt, 11]
    verifier.prefill(state, prompt)
    tree = DraftTree.from_lists([20, 21, 22, 23, 24, 25], [ROOT, ROOT, 0, 1, 0, 2], [0.5] * 6)
    for _ in range(3):  # repeated rounds on the same cache
        verifier.verify(state, committed[-1], tree)
        path = torch.tensor(accepted, dtype=torch.long)
        verifier.accept(state, path)
        committed += [*tree.token_ids[path].tolist(), 30]
        assert state.length == len(committed) - 1
        expected = fresh_cache_keys(model, committed[:-1])
        for layer, keys in zip(state.cache.layers, expected, strict=True):
            assert torch.allclose(layer_kv(layer)[0], keys, atol=1e-5)


def test_rollback_then_continue() -> None:
    model = tiny_model("qwen2")
    verifier = TargetVerifier(model)
    state = VerifierState()
    verifier.prefill(state, list(range(3, 20)))
    verifier.rollback(state, 10)
    logits, _ = verifier.verify(state, 13, DraftTree.empty())
    with torch.no_grad():
        expected = model(torch.tensor([list(range(3, 14))])).logits[0, -1]
    assert torch.allclose(logits[0], expected, atol=1e-5)


def test_bad_prompts_and_trees_are_refused() -> None:
    verifier = TargetVerifier(tiny_model("llama", max_position_embeddings=64))
    with pytest.raises(RequestError, match="empty"):
        verifier.check_prompt([])
    with pytest.raises(RequestError, match="context of 64"):
        verifier.check_prompt(list(range(3, 70)))
    with pytest.raises(RequestError, match="vocabulary"):
        verifier.check_prompt([5, 500])
    state = VerifierState()
    verifier.prefill(state, [5, 6])
    big = DraftTree.from_lists(list(range(10)), [ROOT] * 10, [0.1] * 10)
    with pytest.raises(ProtocolError, match="budget of 4"):
        verifier.verify(state, 7, big, max_nodes=4)
    with pytest.raises(ProtocolError, match="vocabulary"):
        verifier.verify(state, 7, DraftTree.from_lists([1000], [ROOT], [0.5]))
