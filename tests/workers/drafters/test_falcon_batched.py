"""Falcon drafter on the slot cache: many sessions grown in one forward equal each grown alone, commits
leave a slot holding what a fresh prefill holds, and slots come and go with sessions."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.workers.drafters.test_falcon import (
    VOCAB,
    assert_same_tree,
    commit,
    features_of,
    first_child_token,
    make_drafter,
    open_session,
    path_to,
    tiny_target,
)
from workers.drafters.batched import INITIAL_LENGTH, INITIAL_SLOTS
from workers.drafters.falcon import FalconDrafter, FalconSession
from workers.tree import ROOT
from workers.tree_policy import TreeConfig

CONFIG = TreeConfig(total_tokens=16, depth=6, top_k=3)


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_target()


def prompts(lengths: list[int], seed: int = 5) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def hit(session: FalconSession, target: LlamaForCausalLM) -> bool:
    """Accept the best child, bonus = its best child: the tree re-roots."""
    tree = session.tree
    best = int(tree.children(ROOT)[0])
    return commit(session, target, [first_child_token(tree), first_child_token(tree, best)])


def miss(session: FalconSession, target: LlamaForCausalLM) -> bool:
    """Accept the best child, bonus outside the tree: a rollback."""
    tree = session.tree
    best = int(tree.children(ROOT)[0])
    taken = set(tree.token_ids[tree.children(best)].tolist())
    bonus = next(t for t in range(VOCAB) if t not in taken)
    return commit(session, target, [first_child_token(tree), bonus])


def fresh(session: FalconSession, target: LlamaForCausalLM) -> None:
    """Left as opened: its first step prefills the whole prompt."""


def grown(session: FalconSession, target: LlamaForCausalLM) -> None:
    """Two steps in, the second one narrow: a half-grown tree with cached tree pairs."""
    assert session.grow() and session.grow(1)


def drafted_then(commit_kind: Callable[[FalconSession, LlamaForCausalLM], bool]
                 ) -> Callable[[FalconSession, LlamaForCausalLM], None]:
    def prepare(session: FalconSession, target: LlamaForCausalLM) -> None:
        session.draft()
        commit_kind(session, target)
    return prepare


PREPARES = [fresh, drafted_then(hit), drafted_then(miss), grown, fresh]
LENGTHS = [10, 6, 14, 8, 45]  # the 45-token prompt's first step is wide enough to run in a forward of its own
EXPANSIONS = [[None, 1, 2, 3, None], [2, None, 1, None, 3], [1, 3, None, 2, 1], [None, 2, 3, 1, None]]


def assert_same_session(got: FalconSession, want: FalconSession) -> None:
    assert_same_tree(got.tree, want.tree)
    torch.testing.assert_close(got.node_features, want.node_features, atol=1e-5, rtol=0)
    assert got.cache_length == want.cache_length
    assert got.num_cached_committed == want.num_cached_committed


def twin_sessions(drafter: FalconDrafter, target: LlamaForCausalLM, config: TreeConfig
                  ) -> tuple[list[FalconSession], list[FalconSession]]:
    """Two sessions per prompt, brought into the same state: one to grow alone, one to grow batched."""
    alone, together = [], []
    for prompt, prepare in zip(prompts(LENGTHS), PREPARES, strict=True):
        pair = [open_session(drafter, target, prompt, config) for _ in range(2)]
        for session in pair:
            prepare(session, target)
        assert_same_session(pair[0], pair[1])
        alone.append(pair[0])
        together.append(pair[1])
    assert alone[1].num_reroot_hits == 1 and alone[2].num_reroot_hits == 0 and alone[2].num_commits == 1
    return alone, together


def step_both(drafter: FalconDrafter, alone: list[FalconSession], together: list[FalconSession],
              expansions: list[int | None]) -> None:
    want = [session.grow(limit) for session, limit in zip(alone, expansions, strict=True)]
    assert drafter.grow_many(together, expansions) == want
    for got_session, want_session in zip(together, alone, strict=True):
        assert_same_session(got_session, want_session)


@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_grow_many_equals_growing_each_alone(target: LlamaForCausalLM, block_size: int) -> None:
    drafter = make_drafter(target, block_size)
    alone, together = twin_sessions(drafter, target, CONFIG)
    for expansions in EXPANSIONS:
        step_both(drafter, alone, together, expansions)
    assert all(session.tree.num_nodes > 0 for session in together)
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):  # commit both ways mid-flight, go on together
        assert (hit if i % 2 else miss)(a, target) == (hit if i % 2 else miss)(b, target)
    for expansions in EXPANSIONS[:2]:
        step_both(drafter, alone, together, expansions)
    assert_same_tree(together[0].draft(), alone[0].draft())


def assert_committed_like_fresh(drafter: FalconDrafter, session: FalconSession, num_entries: int,
                                target: LlamaForCausalLM) -> None:
    """The slot's first `num_entries` entries equal those of a fresh session prefilled on the committed ids."""
    reference = open_session(drafter, target, session.committed_ids, session.config)
    assert reference.grow()
    cache = drafter.slot_cache
    got, want = cache.entries(session.slot, num_entries), cache.entries(reference.slot, num_entries)
    for (got_keys, got_values), (want_keys, want_values) in zip(got, want, strict=True):
        torch.testing.assert_close(got_keys, want_keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_values, want_values, atol=1e-5, rtol=0)
    reference.release()


@pytest.mark.parametrize("commit_kind", [hit, miss])
def test_after_commit_the_slot_holds_a_fresh_prefill_of_the_committed_pairs(
        target: LlamaForCausalLM, commit_kind: Callable[[FalconSession, LlamaForCausalLM], bool]) -> None:
    drafter = make_drafter(target)
    session, other = (open_session(drafter, target, p, CONFIG) for p in prompts([12, 7]))
    for _ in range(3):
        drafter.grow_many([session, other], [None, None])
    num_cached = len(session.committed_ids) - 1
    assert session.cache_length > num_cached, "tree pairs are cached behind the committed ones"
    assert commit_kind(session, target) == (commit_kind is hit)
    assert session.cache_length == session.num_cached_committed == num_cached, "tree pairs are dropped"
    assert_committed_like_fresh(drafter, session, num_cached, target)
    drafter.grow_many([other, session], [None, None])  # the queued committed pairs are computed here
    num_committed = len(session.committed_ids) - 1
    assert session.num_cached_committed == num_committed
    assert_committed_like_fresh(drafter, session, num_committed, target)
    assert miss(session, target) is False  # a second round on top of the first
    drafter.grow_many([session, other], [2, 1])
    assert_committed_like_fresh(drafter, session, len(session.committed_ids) - 1, target)


def test_slots_follow_sessions_and_the_cache_grows(target: LlamaForCausalLM) -> None:
    drafter, reference = make_drafter(target), make_drafter(target)
    texts = prompts([9, 4, 11, 6, 8, 5, INITIAL_LENGTH + 20], seed=7)  # more sessions than slots, one longer
    sessions = [open_session(drafter, target, p, CONFIG) for p in texts]
    cache = drafter.slot_cache
    assert cache.num_slots >= len(texts) > INITIAL_SLOTS
    assert len({s.slot for s in sessions}) == len(texts)
    alone = [open_session(reference, target, p, CONFIG) for p in texts]
    for _ in range(2):
        assert drafter.grow_many(sessions, [None] * len(sessions)) == [s.grow() for s in alone]
    assert cache.max_len > INITIAL_LENGTH
    for got, want in zip(sessions, alone, strict=True):
        assert_same_tree(got.tree, want.tree)
    free, freed = cache.num_free, sessions[2].slot
    sessions[2].release()
    assert sessions[2].slot == -1 and cache.num_free == free + 1
    newcomer = open_session(drafter, target, texts[2], CONFIG)
    assert newcomer.slot == freed and cache.num_free == free
    sessions[2].reset(texts[2], features_of(target, texts[2])[:-1])  # a released session takes a slot again
    assert sessions[2].slot >= 0 and cache.num_free == free - 1
    assert drafter.grow_many([newcomer, sessions[2], sessions[0]], [None] * 3) == [True] * 3
    assert_same_tree(newcomer.tree, sessions[2].tree)
    with pytest.raises(ValueError, match="shape"):  # a refused open takes no slot
        drafter.open(texts[0], CONFIG, torch.zeros(3, 1))
    assert cache.num_free == free - 1


def test_a_process_ending_with_falcon_sessions_open_exits_cleanly() -> None:
    """A drafter worker shut down while it holds requests: the sessions' finalisers run during interpreter
    shutdown, when making a tensor aborted the process in torch (THPVariable_clear's assertion)."""
    script = (
        "from tests.workers.drafters.test_falcon import make_drafter, open_session, tiny_target\n"
        "from workers.tree_policy import TreeConfig\n"
        "target = tiny_target()\n"
        "drafter = make_drafter(target)\n"
        "sessions = [open_session(drafter, target, [5, 6, 7, 8, 9], TreeConfig(8, 4, 2)) for _ in range(3)]\n"
        "print('opened', len(sessions))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "opened 3" in done.stdout and "INTERNAL ASSERT" not in done.stderr


@pytest.mark.parametrize("block_size", [1, 2])
def test_a_full_living_tree_prunes_and_grows_on_as_a_fresh_session_would(target: LlamaForCausalLM,
                                                                         block_size: int) -> None:
    """At the cap the session drops its least likely leaves and keeps growing; what it grows after a prune
    is what a fresh session computes from the expanded node's path (its cache and features stayed aligned)."""
    drafter = make_drafter(target, block_size)
    config = TreeConfig(total_tokens=8, depth=6, top_k=3, max_living_nodes=24, prune_living=True)
    committed = prompts([12])[0]

    def steps_until_full(session: FalconSession) -> int:
        steps = 0
        while steps < 40 and (session.make_room() or True) and session.grow():
            steps += 1
        return steps

    stopping = open_session(drafter, target, committed, dataclasses.replace(config, prune_living=False))
    num_full = steps_until_full(stopping)
    assert num_full < 40  # without pruning it stops at the cap
    session = open_session(drafter, target, committed, config)
    for _ in range(num_full):
        assert session.grow()
    num_prunes = num_steps = 0
    leaves: set[int] = set()
    for _ in range(6):
        old_tree, old_features = session.tree, session.node_features.clone()
        if not session.make_room():
            break
        num_prunes += 1
        assert session.tree.num_nodes < old_tree.num_nodes
        assert session.node_features.shape[0] == session.tree.num_nodes
        for node in range(session.tree.num_nodes):  # every survivor keeps its probability and its feature
            old_node = old_tree.follow(session.tree.token_ids[path_to(session.tree, node)].tolist())[-1]
            assert float(session.tree.probs[node]) == float(old_tree.probs[old_node])
            assert torch.equal(session.node_features[node], old_features[old_node])
        leaves = {n for n in range(session.tree.num_nodes) if not session.tree.children(n).numel()}
        assert session.grow()  # it goes on where the capped session stopped
        num_steps += 1
    assert num_prunes == num_steps >= 1
    expanded = [n for n in leaves if session.tree.children(n).numel()]
    assert expanded
    true_features = features_of(target, committed)[:-1]
    for node in expanded:
        path = path_to(session.tree, node)
        fresh = drafter.open(committed + session.tree.token_ids[path].tolist(), config,
                             torch.cat([true_features, session.node_features[path]]))
        assert fresh.grow()
        got, want = session.tree.children(node), fresh.tree.children(ROOT)
        assert torch.equal(session.tree.token_ids[got], fresh.tree.token_ids[want])
        torch.testing.assert_close(session.tree.probs[got], fresh.tree.probs[want], atol=1e-5, rtol=0)
