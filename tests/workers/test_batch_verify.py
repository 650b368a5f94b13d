"""Batched verification on the slot cache: per-row logits equal batch-1 logits, compaction equals a fresh
prefill of the committed tokens, and chunked prefill equals one prefill."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from protocol.params import SamplingParams
from tests.models import layer_kv, tiny_model
from workers.batch_mask import Row, batch_inputs
from workers.batch_verify import VerifyJob, prefill_batch, verify_batch
from workers.slot_cache import CacheFullError, SlotCache
from workers.target import TargetVerifier, VerifierState
from workers.tree import ROOT, DraftTree


def random_tree(num_nodes: int, vocab: int, seed: int) -> DraftTree:
    gen = torch.Generator().manual_seed(seed)
    parents = [ROOT]
    for i in range(1, num_nodes):
        parents.append(int(torch.randint(-1, i, (1,), generator=gen)))
    tokens = torch.randint(3, vocab, (num_nodes,), generator=gen).tolist()
    return DraftTree.from_lists(tokens, parents, [0.5] * num_nodes)


def prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (n,), generator=gen).tolist() for n in lengths]


def slot_cache(model: object, slots: int = 6, max_len: int = 128) -> SlotCache:
    return SlotCache.for_model(model.config, slots, max_len, torch.float32, "cpu")  # type: ignore[attr-defined]


# rows in another order than their slots: a run of slots (verified as a view of the cache, rows sorted by
# slot and the verdicts put back in the jobs' order) or slots with holes between them (a gather)
LAYOUTS = {"run": [2, 0, 3, 1], "holes": [4, 0, 5, 2]}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batched_rows_equal_batch_one_logits(arch: str, attn: str, layout: str) -> None:
    extra = {"sliding_window": 12} if arch == "mistral" else {}  # prefixes longer than the window
    model = tiny_model(arch, attn=attn, **extra)
    verifier = TargetVerifier(model)
    cache = slot_cache(model)
    lengths, sizes = [30, 7, 19, 44], [20, 0, 3, 9]  # mixed prompt lengths and tree sizes
    every = [cache.allocate() for _ in range(6)]
    slots = [every[i] for i in LAYOUTS[layout]]
    texts = prompts(lengths)
    prefill_batch(verifier, cache, slots, [0] * 4, [t[:-1] for t in texts])
    trees = [random_tree(n, 96, seed=i) if n else DraftTree.empty() for i, n in enumerate(sizes)]
    jobs = [VerifyJob(s, len(t) - 1, t[-1], tree, SamplingParams())
            for s, t, tree in zip(slots, texts, trees, strict=True)]
    verdicts = verify_batch(verifier, cache, jobs)
    for text, tree, verdict in zip(texts, trees, verdicts, strict=True):
        state = VerifierState()  # the batch-1 path on a DynamicCache
        verifier.prefill(state, text[:-1])
        logits, hidden = verifier.verify(state, text[-1], tree)
        assert torch.allclose(verdict.logits, logits, atol=1e-5)
        assert torch.equal(verdict.logits.argmax(-1), logits.argmax(-1))
        assert torch.allclose(verdict.hidden, hidden, atol=1e-5)


def committed_after(text: list[int], tree: DraftTree, path: torch.Tensor, bonus: int) -> list[int]:
    return [*text, *tree.token_ids[path].tolist(), bonus]


def test_compaction_equals_a_fresh_prefill_of_the_committed_tokens() -> None:
    model = tiny_model("llama", seed=3)
    verifier = TargetVerifier(model)
    cache = slot_cache(model)
    texts = prompts([12, 25, 5])
    slots = [cache.allocate() for _ in texts]
    prefill_batch(verifier, cache, slots, [0] * 3, [t[:-1] for t in texts])
    for round_ in range(4):  # rounds on the same slots; trees built so that something is accepted
        jobs = []
        for b, text in enumerate(texts):
            with torch.no_grad():
                greedy = int(model(torch.tensor([text])).logits[0, -1].argmax())
            tree = DraftTree.from_lists([greedy, 50 + b, 40], [ROOT, ROOT, 0], [0.5] * 3) if (round_ + b) % 2 \
                else DraftTree.from_lists([60, greedy], [ROOT, ROOT], [0.5] * 2)
            jobs.append(VerifyJob(slots[b], len(text) - 1, text[-1], tree, SamplingParams()))
        verdicts = verify_batch(verifier, cache, jobs)
        texts = [committed_after(t, j.tree, v.path, v.bonus) for t, j, v in zip(texts, jobs, verdicts, strict=True)]
        assert any(v.path.numel() for v in verdicts)
    for slot, text in zip(slots, texts, strict=True):
        assert cache.lengths[slot] == len(text) - 1
        fresh = VerifierState()
        verifier.prefill(fresh, text[:-1])
        for (keys, values), layer in zip(cache.entries(slot), fresh.cache.layers, strict=True):
            fresh_keys, fresh_values = layer_kv(layer)
            assert torch.allclose(keys, fresh_keys[0], atol=1e-5)
            assert torch.allclose(values, fresh_values[0], atol=1e-5)


def test_chunked_prefill_equals_one_prefill() -> None:
    model = tiny_model("qwen2", seed=4)
    verifier = TargetVerifier(model)
    cache = slot_cache(model)
    text = prompts([37])[0]
    slot = cache.allocate()
    hidden = [prefill_batch(verifier, cache, [slot], [start], [text[start:start + 8]])[0]
              for start in range(0, len(text), 8)]
    _, reference = verifier.prefill(VerifierState(), text)
    assert torch.allclose(torch.cat(hidden), reference, atol=1e-5)
    assert cache.lengths[slot] == len(text)


def test_padding_rows_see_nothing_of_other_rows() -> None:
    rows = [Row.tree(5, DraftTree.from_lists([1, 2], [ROOT, 0], [0.5, 0.5])), Row.chunk([7])]
    ids, positions, mask = batch_inputs(rows, [3, 1], kv_len=6, dtype=torch.float32)
    visible = mask[:, 0] == 0
    assert ids.tolist() == [[5, 1, 2], [7, 0, 0]] and positions.tolist() == [[3, 4, 5], [1, 1, 1]]
    assert visible[0].tolist() == [[True] * 4 + [False] * 2, [True] * 5 + [False], [True] * 6]
    # row 1 writes at 1..3: its real entry sees the prefix and itself; each padding entry only itself
    assert visible[1].tolist() == [[True, True, False, False, False, False], [False, False, True, False, False, False],
                                   [False, False, False, True, False, False]]


def test_slots_are_bounded_and_released() -> None:
    model = tiny_model("llama")
    cache = slot_cache(model, slots=2, max_len=16)
    a, b = cache.allocate(), cache.allocate()
    with pytest.raises(CacheFullError, match="slots are in use"):
        cache.allocate()
    with pytest.raises(CacheFullError, match="beyond the slot length"):
        cache.begin([a], [10], 8)
    cache.release(a)
    assert cache.allocate() == a and b == 1
    assert cache.nbytes == SlotCache.bytes_needed(model.config, 2, 16, torch.float32)


@pytest.mark.parametrize("slots", [[1, 2, 3], [3, 0, 2]])
def test_write_puts_each_rows_entries_at_its_positions(slots: list[int]) -> None:
    """Every layer's write lands row b's entries in slot slots[b] at starts[b] .. (fewer entries than the
    width too: Hidden Transfer's slots join the upper layers only) and returns each row's [0, kv_len)."""
    cache = SlotCache(num_layers=2, num_slots=4, kv_heads=2, max_len=16, head_dim=3)
    starts, width = [5, 0, 9], 4
    kv_len = cache.begin(slots, starts, width)
    assert kv_len == 13 and (cache.batch is not None) and (cache.batch.first is not None) == (slots == [1, 2, 3])
    gen = torch.Generator().manual_seed(0)
    for layer, brought in ((0, width), (1, width - 1)):
        keys, values = (torch.randn(3, 2, brought, 3, generator=gen) for _ in range(2))
        seen_keys, seen_values = cache.write(layer, keys, values)
        for b, (slot, start) in enumerate(zip(slots, starts, strict=True)):
            assert torch.equal(cache.keys[layer][slot, :, start: start + brought], keys[b])
            assert torch.equal(cache.values[layer][slot, :, start: start + brought], values[b])
            assert torch.equal(seen_keys[b], cache.keys[layer][slot, :, :kv_len])
            assert torch.equal(seen_values[b], cache.values[layer][slot, :, :kv_len])
    untouched = [s for s in range(4) if s not in slots]
    assert all(not cache.keys[0][s].any() for s in untouched)
    cache.end()


def test_a_run_of_slots_in_another_order_is_attended_as_a_view() -> None:
    """verify_batch runs rows in slot order, so slots that form a run are read as one view of the cache
    (no gather of every row's keys and values); the verdicts still come back in the jobs' order."""
    model = tiny_model("llama", seed=3)
    verifier = TargetVerifier(model)
    cache = slot_cache(model)
    every = [cache.allocate() for _ in range(4)]
    slots = [every[i] for i in (2, 0, 3, 1)]
    texts = prompts([9, 14, 5, 11])
    prefill_batch(verifier, cache, slots, [0] * 4, [t[:-1] for t in texts])
    seen: list[int | None] = []
    begin = cache.begin

    def spy(*args: Any, **kwargs: Any) -> int:
        kv_len = begin(*args, **kwargs)
        assert cache.batch is not None
        seen.append(cache.batch.first)
        return kv_len

    cache.begin = spy  # type: ignore[method-assign]
    trees = [random_tree(3, 96, seed=i) for i in range(4)]
    jobs = [VerifyJob(s, len(t) - 1, t[-1], tree, SamplingParams()) for s, t, tree in zip(slots, texts, trees,
                                                                                          strict=True)]
    verdicts = verify_batch(verifier, cache, jobs)
    assert seen == [0]
    for text, tree, verdict in zip(texts, trees, verdicts, strict=True):  # job order kept
        state = VerifierState()
        verifier.prefill(state, text[:-1])
        logits, _ = verifier.verify(state, text[-1], tree)
        assert torch.equal(verdict.logits.argmax(-1), logits.argmax(-1))
