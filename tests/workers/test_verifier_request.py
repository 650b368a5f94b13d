"""The verifier's per-request state: trees built on older epochs are re-rooted or dropped, never misapplied."""

from __future__ import annotations

from protocol.messages import Draft
from protocol.params import SamplingParams
from workers.tree import ROOT, DraftTree
from workers.verifier_request import VerifierRequest
from workers.wire import tree_blobs

PROMPT = [1, 2, 3, 4]  # committed; the root is 4


def request(mode: str = "async") -> VerifierRequest:
    return VerifierRequest(0, SamplingParams(), list(PROMPT), 16, mode, False, 0, frozenset({99}))


def chain_tree() -> DraftTree:
    """root(4) -> 10 -> 11 -> 12, and root -> 20."""
    return DraftTree.from_lists([10, 11, 12, 20], [ROOT, 0, 1, ROOT], [0.9, 0.8, 0.7, 0.1])


def draft(epoch: int, root: int, tree: DraftTree) -> Draft:
    return Draft("r", epoch, root, *tree_blobs(tree))


def test_a_tree_built_before_the_last_commit_is_rerooted_along_it() -> None:
    r = request()
    assert not r.commit([10])  # nothing held: no re-root hit
    r.receive(draft(4, 4, chain_tree()))  # built when the root was 4, i.e. before 10 was committed
    r.take_pending()
    assert r.tree.token_ids.tolist() == [11, 12] and r.tree.depths.tolist() == [1, 2]
    assert r.commit([11, 12])  # the held tree spelled both tokens: a hit
    assert r.tree.num_nodes == 0 and r.committed == [*PROMPT, 10, 11, 12]


def test_trees_that_no_longer_fit_are_dropped_and_the_held_one_kept() -> None:
    r = request()
    r.receive(draft(4, 4, chain_tree()))
    r.take_pending()
    held = r.tree
    r.commit([20])  # the branch the tree had
    assert r.tree.num_nodes == 0
    r.tree = held  # pretend it is still held, then offer trees that do not fit
    assert not r.offer(4, 4, chain_tree().reroot([10]) or chain_tree())  # built on root 4 but diverged at 10
    assert not r.offer(5, 7, chain_tree())  # root token is not what was committed at that epoch
    assert not r.offer(9, 20, chain_tree())  # from the future
    assert r.tree is held and r.num_drafts_dropped == 3


def test_only_the_newest_pending_draft_is_decoded() -> None:
    r = request()
    r.receive(draft(4, 4, DraftTree.from_lists([30], [ROOT], [0.5])))
    r.receive(draft(4, 4, chain_tree()))
    r.take_pending()
    assert r.tree.token_ids.tolist() == [10, 11, 12, 20] and r.num_drafts_dropped == 1


def test_a_malformed_draft_costs_the_request_nothing() -> None:
    r = request()
    good, _, probs = tree_blobs(chain_tree())
    bad_parents = tree_blobs(DraftTree.from_lists([1, 2, 3], [ROOT, 0, 1], [0.5] * 3))[1]  # 3 parents for 4 nodes
    r.receive(Draft("r", 4, 4, good, bad_parents, probs))
    assert r.take_pending() is not None and r.tree.num_nodes == 0 and not r.is_stopped


def test_sync_mode_waits_for_a_draft_of_the_current_epoch() -> None:
    r = request("sync")
    assert not r.is_runnable
    r.receive(draft(3, 3, chain_tree()))  # an older epoch does not make it runnable
    assert not r.is_runnable
    r.receive(draft(4, 4, chain_tree()))
    assert r.is_runnable
    r.commit([10])
    assert not r.is_runnable  # the next epoch needs its own draft


def test_stop_tokens_and_length_stop_the_request() -> None:
    r = request()
    r.commit([5, 99])
    assert r.is_stopped and not r.is_runnable
    r2 = VerifierRequest(0, SamplingParams(), list(PROMPT), 16, "off", False, 6, frozenset())
    r2.commit([5])
    assert not r2.is_stopped
    r2.commit([6, 7])
    assert r2.is_stopped
