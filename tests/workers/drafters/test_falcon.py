"""Falcon drafter: cache and tree-mask consistency, commit/rollback, tree policies, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from protocol.errors import ModelMismatchError
from workers.drafters.falcon import FalconDrafter, FalconSession
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel, load_target_head
from workers.tree import ROOT, DraftTree
from workers.tree_mask import additive_mask
from workers.tree_policy import TreeConfig, rank_path_codes

VOCAB, HIDDEN = 200, 64


def tiny_target(seed: int = 0, tie_word_embeddings: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, initializer_range=0.2,
                         tie_word_embeddings=tie_word_embeddings)
    model = LlamaForCausalLM(config)
    model.train(False)  # = eval(), which transformers leaves unannotated
    return model


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_target()


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    torch.manual_seed(2)
    return torch.randint(0, VOCAB, (10,)).tolist()


def features_of(target: LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    """[len, H] the target's last-layer features (final norm output) at every position."""
    with torch.no_grad():
        hidden: torch.Tensor = target.model(torch.tensor([token_ids])).last_hidden_state[0]
    return hidden


def make_drafter(target: LlamaForCausalLM, block_size: int = 2, attn: str = "sdpa",
                 seed: int = 1) -> FalconDrafter:
    torch.manual_seed(seed)
    config = FalconConfig.from_target_config(target.config, block_size=block_size, attn_implementation=attn)
    return FalconDrafter(FalconDrafterModel(config, target.model.embed_tokens.weight, target.lm_head.weight))


def open_session(drafter: FalconDrafter, target: LlamaForCausalLM, committed: list[int],
                 config: TreeConfig) -> FalconSession:
    return drafter.open(committed, config, features_of(target, committed)[:-1])


def path_to(tree: DraftTree, node: int) -> list[int]:
    return torch.nonzero(tree.ancestors()[node]).flatten().tolist()  # topological = root-to-node order


def block_reference(model: FalconDrafterModel, pair_inputs: torch.Tensor,
                    num_placeholders: int) -> torch.Tensor:
    """From scratch, no cache: causal pairs [T, H] then placeholders that see all pairs and each other."""
    inputs = torch.cat([pair_inputs, model.placeholders(num_placeholders)[0]])  # [T+k-1, H]
    n = inputs.shape[0]
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    visible[n - num_placeholders:, n - num_placeholders:] = True
    with torch.no_grad():
        mask = additive_mask(visible, inputs.dtype)  # [1, 1, n, n]
        out: torch.Tensor = model(inputs[None], mask, torch.arange(n)[None], None)
    return out[0]


def assert_same_tree(a: DraftTree, b: DraftTree) -> None:
    assert torch.equal(a.token_ids, b.token_ids)
    assert torch.equal(a.parents, b.parents)
    torch.testing.assert_close(a.probs, b.probs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("block_size", "attn"), [(1, "sdpa"), (2, "sdpa"), (2, "eager"), (3, "sdpa")])
def test_chain_cached_blocks_match_full_recompute(target: LlamaForCausalLM, prompt: list[int],
                                                  block_size: int, attn: str) -> None:
    drafter = make_drafter(target, block_size, attn)
    session = open_session(drafter, target, prompt, TreeConfig(total_tokens=8, depth=6, top_k=1))
    num_blocks = 6 // block_size
    for _ in range(num_blocks):
        assert session.grow()
    tree, model, c = session.tree, drafter.model, len(prompt)
    assert torch.equal(tree.parents, torch.arange(-1, 5)), "top_k=1 must grow a chain of depth 6"
    true_features = features_of(target, prompt)[: c - 1]
    committed_pairs = model.fuse(true_features[None], torch.tensor([prompt[1:]]))  # [1, c-1, H]
    chain_pairs = model.fuse(session.node_features[None], tree.token_ids[None])  # [1, 6, H]
    pairs = torch.cat([committed_pairs, chain_pairs], dim=1)[0].detach()
    for block in range(num_blocks):  # block b: pair at position c-2 + b*k, children at depths b*k+1..(b+1)*k
        first = block * block_size
        out = block_reference(model, pairs[: c - 1 + first], block_size - 1)[-block_size:]  # [k, H]
        torch.testing.assert_close(session.node_features[first: first + block_size], out, atol=1e-5, rtol=0)
        probs = torch.softmax(model.logits(out), dim=-1)
        assert torch.equal(tree.token_ids[first: first + block_size], probs.argmax(dim=-1))
        torch.testing.assert_close(tree.probs[first: first + block_size], probs.max(dim=-1).values,
                                   atol=1e-5, rtol=0)


def expanded_nodes(tree: DraftTree) -> list[int]:
    """Nodes whose children came from their own pair (k=2): not the rank-0 child of an expanded node."""
    placeholder_parents = {int(tree.children(ROOT)[0])}
    expanded = []
    for node in range(tree.num_nodes):
        if tree.children(node).numel() and node not in placeholder_parents:
            expanded.append(node)
            placeholder_parents.add(int(tree.children(node)[0]))
    return expanded


def test_tree_mask_matches_a_fresh_chain_along_each_path(target: LlamaForCausalLM, prompt: list[int]) -> None:
    drafter, config = make_drafter(target), TreeConfig(total_tokens=40, depth=8, top_k=3)
    session = open_session(drafter, target, prompt, config)
    for _ in range(3):
        assert session.grow()
    tree, true_features = session.tree, features_of(target, prompt)[:-1]
    nodes = expanded_nodes(tree)
    assert len(nodes) >= 5, "several inner nodes must have been expanded in batched tree forwards"
    for node in nodes:
        path = path_to(tree, node)
        fresh = drafter.open(prompt + tree.token_ids[path].tolist(), config,
                             torch.cat([true_features, session.node_features[path]]))
        assert fresh.grow()
        got_first, want_first = tree.children(node), fresh.tree.children(ROOT)
        assert torch.equal(tree.token_ids[got_first], fresh.tree.token_ids[want_first])
        torch.testing.assert_close(tree.probs[got_first], fresh.tree.probs[want_first], atol=1e-5, rtol=0)
        got_second, want_second = tree.children(int(got_first[0])), fresh.tree.children(int(want_first[0]))
        assert torch.equal(tree.token_ids[got_second], fresh.tree.token_ids[want_second])
        torch.testing.assert_close(tree.probs[got_second], fresh.tree.probs[want_second], atol=1e-5, rtol=0)


def commit(session: FalconSession, target: LlamaForCausalLM, new_ids: list[int]) -> bool:
    """Apply a verification result with the target's true features of the newly committed positions."""
    old_len = len(session.committed_ids)
    features = features_of(target, session.committed_ids + new_ids)
    return session.commit(new_ids, features[old_len - 1: old_len - 1 + len(new_ids)])


def first_child_token(tree: DraftTree, node: int = ROOT) -> int:
    return int(tree.token_ids[tree.children(node)[0]])


def missing_token(tree: DraftTree) -> int:
    taken = set(tree.token_ids[tree.children(ROOT)].tolist())
    return next(t for t in range(VOCAB) if t not in taken)


def grown_like_fresh(session: FalconSession, drafter: FalconDrafter, target: LlamaForCausalLM,
                     num_steps: int) -> None:
    fresh = open_session(drafter, target, session.committed_ids, session.config)
    for _ in range(num_steps):
        assert session.grow() == fresh.grow()
    assert_same_tree(session.snapshot(), fresh.snapshot())
    assert_same_tree(session.tree, fresh.tree)


def test_commits_hits_and_misses_match_a_fresh_session(target: LlamaForCausalLM, prompt: list[int]) -> None:
    drafter, config = make_drafter(target), TreeConfig(total_tokens=12, depth=5, top_k=3)
    session = open_session(drafter, target, prompt, config)
    session.draft()
    tree = session.tree
    accepted = first_child_token(tree)
    assert commit(session, target, [accepted, first_child_token(tree, int(tree.children(ROOT)[0]))])
    assert session.grow()  # computes the queued committed pairs and tree pairs of the re-rooted tree
    assert commit(session, target, [first_child_token(session.tree)])  # bonus only, no grow after it
    assert not commit(session, target, [missing_token(session.tree)])  # rollback with two commits queued
    assert session.tree.num_nodes == 0
    grown_like_fresh(session, drafter, target, num_steps=3)
    assert not commit(session, target, [first_child_token(session.tree), missing_token(session.tree)])
    grown_like_fresh(session, drafter, target, num_steps=2)
    assert commit(session, target, [first_child_token(session.tree)])
    session.reset(session.committed_ids, features_of(target, session.committed_ids)[:-1])
    grown_like_fresh(session, drafter, target, num_steps=3)
    assert session.num_reroot_hits == 3 and session.num_commits == 5


def test_reroot_keeps_each_surviving_node_with_its_feature(target: LlamaForCausalLM,
                                                           prompt: list[int]) -> None:
    drafter = make_drafter(target)
    session = open_session(drafter, target, prompt, TreeConfig(total_tokens=30, depth=6, top_k=3))
    for _ in range(4):
        session.grow()
    old_tree, old_features = session.tree, session.node_features.clone()
    new_root = int(old_tree.children(ROOT)[0])
    assert commit(session, target, [int(old_tree.token_ids[new_root])])
    assert session.tree.num_nodes == old_tree.subtree(new_root).num_nodes > 3
    assert session.node_features.shape[0] == session.tree.num_nodes
    root_token = int(old_tree.token_ids[new_root])
    for node in range(session.tree.num_nodes):
        spelled = session.tree.token_ids[path_to(session.tree, node)].tolist()
        old_node = old_tree.follow([root_token, *spelled])[-1]
        assert torch.equal(session.node_features[node], old_features[old_node])
    has_children = torch.zeros(session.tree.num_nodes + 1, dtype=torch.bool)
    has_children[session.tree.parents] = True  # ROOT lands on the extra last slot
    leaves = torch.nonzero(~has_children[:-1]).flatten().tolist()
    assert session.grow()  # surviving path pairs are recomputed lazily, after the queued committed pair
    expanded = [n for n in leaves if session.tree.children(n).numel()]
    assert expanded
    committed = session.committed_ids
    true_features = features_of(target, committed)[:-1]
    for node in expanded:
        path = path_to(session.tree, node)
        fresh = drafter.open(committed + session.tree.token_ids[path].tolist(), session.config,
                             torch.cat([true_features, session.node_features[path]]))
        assert fresh.grow()
        got, want = session.tree.children(node), fresh.tree.children(ROOT)
        assert torch.equal(session.tree.token_ids[got], fresh.tree.token_ids[want])
        torch.testing.assert_close(session.tree.probs[got], fresh.tree.probs[want], atol=1e-5, rtol=0)


def test_static_tree_has_exactly_the_spec_shape(target: LlamaForCausalLM, prompt: list[int]) -> None:
    paths = ((0,), (1,), (0, 0), (0, 1), (0, 0, 0))
    config = TreeConfig(static_paths=paths)
    session = open_session(make_drafter(target), target, prompt, config)
    snapshot = session.draft()
    assert session.tree.num_nodes == len(paths)
    codes = set(rank_path_codes(snapshot, config.top_k).tolist())
    assert codes == set(config.spec_codes)
    assert not session.grow(), "a complete static tree has nothing left to expand"


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_dynamic_tree_respects_depth_and_total_tokens(target: LlamaForCausalLM, prompt: list[int],
                                                      depth: int) -> None:
    config = TreeConfig(total_tokens=10, depth=depth, top_k=4, max_living_depth=depth)
    session = open_session(make_drafter(target), target, prompt, config)
    num_steps = 0
    while session.grow():
        num_steps += 1
        assert num_steps < 50, "growth must stop at the living-tree cap"
    assert session.tree.max_depth == depth, "the living tree reaches the depth budget and never exceeds it"
    snapshot = session.snapshot()
    assert snapshot.num_nodes == (4 if depth == 1 else 10) and snapshot.max_depth <= depth
    assert session.node_features.shape == (session.tree.num_nodes, HIDDEN)
    deeper = open_session(make_drafter(target), target, prompt, TreeConfig(total_tokens=10, depth=depth, top_k=4))
    while deeper.grow():
        pass
    assert deeper.tree.max_depth <= 2 * depth and deeper.snapshot().max_depth <= depth
    if depth == 1:  # small enough to reach the living depth before the node cap
        assert deeper.tree.max_depth == 2  # the living tree runs ahead of the snapshot depth


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, target: LlamaForCausalLM,
                                                      prompt: list[int]) -> None:
    drafter = make_drafter(target)
    drafter.model.save(tmp_path / "falcon")
    assert {p.name for p in (tmp_path / "falcon").iterdir()} == {"falcon_config.json", "model.safetensors"}
    with safe_open(str(tmp_path / "falcon" / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert {"placeholder", "fc.weight", "norm.weight"} <= names
    assert not any("embed" in n or "lm_head" in n for n in names)
    target.save_pretrained(tmp_path / "target")
    loaded = FalconDrafter.from_pretrained(tmp_path / "falcon", tmp_path / "target")
    inputs, n = torch.randn(1, 7, HIDDEN), 7
    mask = additive_mask(torch.ones(n, n, dtype=torch.bool).tril(), torch.float32)
    with torch.no_grad():
        assert torch.equal(drafter.model(inputs, mask, torch.arange(n)[None]),
                           loaded.model(inputs, mask, torch.arange(n)[None]))
    config = TreeConfig(total_tokens=12, depth=4, top_k=3)
    assert_same_tree(open_session(drafter, target, prompt, config).draft(),
                     open_session(loaded, target, prompt, config).draft())


@pytest.mark.parametrize("tied", [False, True])
def test_load_target_head_reads_single_sharded_and_tied(tmp_path: Path, tied: bool) -> None:
    target = tiny_target(seed=3, tie_word_embeddings=tied)
    embed = target.model.embed_tokens.weight
    lm_head = embed if tied else target.lm_head.weight
    assert tied or not torch.equal(embed, lm_head)
    target.save_pretrained(tmp_path / "single")
    target.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    for folder in ("single", "sharded"):
        got_embed, got_lm_head = load_target_head(tmp_path / folder)
        assert torch.equal(got_embed, embed) and torch.equal(got_lm_head, lm_head)


def test_mismatches_and_bad_config_values_are_named(target: LlamaForCausalLM, prompt: list[int]) -> None:
    drafter = make_drafter(target)
    drafter.check_target(VOCAB, HIDDEN)
    with pytest.raises(ModelMismatchError, match=r"vocab_size=200.*vocab_size=300"):
        drafter.check_target(300, HIDDEN)
    with pytest.raises(ValueError, match="block_size"):
        FalconConfig.from_target_config(target.config, block_size=0)
    with pytest.raises(ValueError, match="attn_implementation"):
        FalconConfig.from_target_config(target.config, attn_implementation="flash")
    with pytest.raises(ValueError, match="num_kv_heads"):
        FalconConfig.from_target_config(target.config, num_kv_heads=3)
    with pytest.raises(ValueError, match="bogus"):
        FalconConfig.from_target_config(target.config, bogus=1)
    with pytest.raises(ValueError, match="features"):
        drafter.open(prompt, TreeConfig(), None)
    with pytest.raises(ValueError, match="shape"):
        drafter.open(prompt, TreeConfig(), torch.zeros(len(prompt), HIDDEN))


@pytest.mark.parametrize("model_type,tied", [("llama", False), ("qwen2", False), ("gemma", True)])
def test_load_target_head_without_the_key_follows_the_config_class(tmp_path: Path, model_type: str,
                                                                    tied: bool) -> None:
    """config.json without `tie_word_embeddings`: the model type's config class default decides, as transformers
    does (Llama and Qwen2: untied, Gemma: tied), whatever tensors the checkpoint holds."""
    embed, lm_head = torch.randn(8, 4), torch.randn(8, 4)
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": lm_head}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    got_embed, got_lm_head = load_target_head(tmp_path)
    assert torch.equal(got_embed, embed)
    assert torch.equal(got_lm_head, embed if tied else lm_head)


def test_load_target_head_refuses_an_untied_config_without_a_head(tmp_path: Path) -> None:
    save_file({"model.embed_tokens.weight": torch.randn(8, 4)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="untied"):
        load_target_head(tmp_path)
    (tmp_path / "config.json").unlink()  # no config at all: tied exactly when there is no separate head
    got_embed, got_lm_head = load_target_head(tmp_path)
    assert got_lm_head is got_embed
