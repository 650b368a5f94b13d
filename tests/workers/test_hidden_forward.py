"""Hidden Transfer's pseudo slots in the verification forward and in training: they see what the design says
(a slot fed the real state of the position it stands for reproduces that position's real row), real rows
never see them (real logits unchanged by what the slots hold), and the cache after acceptance equals a fresh
prefill of the committed tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from protocol.params import SamplingParams
from tests.models import tiny_model
from tests.workers.test_batch_verify import prompts, random_tree, slot_cache
from workers.batch_verify import VerifyJob, prefill_batch, verify_batch
from workers.hidden_forward import PrefixKV, decoder_layers, run_layers
from workers.hidden_transfer import HiddenConfig, TransferMaps
from workers.pseudo_mask import training_mask
from workers.target import TargetVerifier
from workers.training.hidden_trainer import frozen_pass
from workers.tree import DraftTree

LAYER, K = 1, 3


class FixedSlots(nn.Module):
    """Stands in for the maps: every anchor's slots hold the given states [B, A, k, H]."""

    def __init__(self, config: HiddenConfig, states: torch.Tensor) -> None:
        super().__init__()
        self.config, self.states = config, states

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.states.to(hidden.dtype)


def layer_states(model: Any, ids: list[int]) -> torch.Tensor:
    """[S, H] the real states after the first LAYER decoder layers."""
    with torch.no_grad():
        states: torch.Tensor = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER][0]
    return states


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_training_slot_fed_the_real_state_is_the_real_row(arch: str) -> None:
    """Slot (t, j) stands for position t + 1 + j: given the real states there, it computes the real row."""
    model = tiny_model(arch, num_layers=3)
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    frozen = frozen_pass(model, ids, LAYER)
    length = ids.shape[1]
    source = (torch.arange(length)[:, None] + 1 + torch.arange(K)[None, :]).clamp(max=length - 1)  # [T, k]
    fed = frozen.states[:, source.flatten()]  # [B, T*k, H]
    mask = torch.zeros(training_mask(length, K).shape).masked_fill(~training_mask(length, K), torch.finfo().min)
    positions = source.flatten()[None].expand(2, -1)
    decoder = model.get_decoder()
    with torch.no_grad():
        out = run_layers(decoder, fed, decoder_layers(decoder)[LAYER:], mask[None, None].expand(2, 1, -1, -1),
                         positions, PrefixKV(frozen.keys, frozen.values))
        logits = model.get_output_embeddings()(decoder.norm(out)).unflatten(1, (length, K))
    for j in range(K):
        span = length - 1 - j
        assert torch.allclose(logits[:, :span, j], frozen.logits[:, 1 + j:], atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_verify_slot_fed_the_real_state_is_the_real_row(arch: str) -> None:
    """On the slot cache: a chain tree's anchor at depth d, with slots fed the chain's real states at depths
    d + 1 .., gives the logits of those nodes' own rows (positions, prefix and ancestors seen right)."""
    extra: dict[str, Any] = {"sliding_window": 12} if arch == "mistral" else {}
    model = tiny_model(arch, num_layers=3, **extra)
    verifier = TargetVerifier(model)
    cache = slot_cache(model)
    text = prompts([20])[0]
    chain = torch.randint(3, 96, (6,), generator=torch.Generator().manual_seed(3)).tolist()
    tree = DraftTree.from_lists(chain, list(range(-1, 5)), [0.5] * 6)
    states = layer_states(model, text + chain)  # root at position 19, node i at 20 + i
    config = HiddenConfig.for_target(model.config, LAYER, K)
    for anchor in (0, 2):  # the root, the node at depth 2
        slot = cache.allocate()
        prefill_batch(verifier, cache, [slot], [0], [text[:-1]])
        fed = states[19 + anchor + 1: 19 + anchor + 1 + K][None, None]  # [1, 1, k, H]
        job = VerifyJob(slot, 19, text[-1], tree, SamplingParams(), anchors=(anchor,))
        maps: Any = FixedSlots(config, fed)
        real, pseudo = verifier.forward_rows_pseudo(cache, [slot], [19], [_row(job)], maps, [job.anchors])
        logits = verifier.logits(pseudo[0])
        expected = verifier.logits(real[0, anchor + 1: anchor + 1 + K])
        assert torch.allclose(logits, expected, atol=1e-4)
        cache.release(slot)


def _row(job: VerifyJob) -> Any:
    from workers.batch_mask import Row

    return Row.tree(job.root, job.tree)


def _jobs(model: Any, cache: Any, verifier: TargetVerifier, anchors: list[tuple[int, ...]]) -> list[VerifyJob]:
    lengths, sizes = [30, 7, 19, 44], [12, 0, 3, 9]
    texts = prompts(lengths)
    slots = [cache.allocate() for _ in lengths]
    prefill_batch(verifier, cache, slots, [0] * 4, [t[:-1] for t in texts])
    trees = [random_tree(n, 96, seed=i) if n else DraftTree.empty() for i, n in enumerate(sizes)]
    return [VerifyJob(s, len(t) - 1, t[-1], tree, SamplingParams(), anchors=a)
            for s, t, tree, a in zip(slots, texts, trees, anchors, strict=True)]


ANCHORS = [(0, 3, 5), (0,), (), (2, 0)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_real_rows_never_see_the_slots(arch: str) -> None:
    """Same shapes, slots holding the maps' states or huge random values: real logits bit-identical; and
    equal (to float tolerance, same argmax) to a forward without slots."""
    model = tiny_model(arch, num_layers=3)
    verifier = TargetVerifier(model)
    config = HiddenConfig.for_target(model.config, LAYER, K)
    maps = TransferMaps(config)
    runs = []
    for slots_hold in ("maps", "huge", "none"):
        cache = slot_cache(model)
        jobs = _jobs(model, cache, verifier, ANCHORS)
        if slots_hold == "none":
            verdicts = verify_batch(verifier, cache, [VerifyJob(j.slot, j.start, j.root, j.tree, j.params)
                                                      for j in jobs])
        else:
            fill = maps if slots_hold == "maps" else FixedSlots(
                config, 1e4 * torch.randn(4, 3, K, 64, generator=torch.Generator().manual_seed(9)))
            verdicts = verify_batch(verifier, cache, jobs, fill)  # type: ignore[arg-type]
        runs.append(verdicts)
    for with_maps, huge, plain in zip(*runs, strict=True):
        assert torch.equal(with_maps.logits, huge.logits)
        assert torch.equal(with_maps.hidden, huge.hidden)
        assert torch.allclose(with_maps.logits, plain.logits, atol=1e-5)
        assert torch.equal(with_maps.logits.argmax(-1), plain.logits.argmax(-1))
        assert torch.equal(with_maps.path, plain.path) and with_maps.bonus == plain.bonus
    guessed = [v.guesses is not None for v in runs[0]]
    assert guessed[1] and not guessed[2]  # row 1 (no nodes) always ends at its anchor, the root; row 2 has none


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cache_after_acceptance_equals_a_fresh_prefill(arch: str) -> None:
    model = tiny_model(arch, num_layers=3)
    verifier = TargetVerifier(model)
    cache = slot_cache(model)
    maps = TransferMaps(HiddenConfig.for_target(model.config, LAYER, K))
    with torch.no_grad():
        maps.proj.weight.add_(torch.randn(maps.proj.weight.shape, generator=torch.Generator().manual_seed(1)))
    jobs = _jobs(model, cache, verifier, ANCHORS)
    texts = prompts([30, 7, 19, 44])
    verdicts = verify_batch(verifier, cache, jobs, maps)
    fresh = slot_cache(model)
    for job, text, verdict in zip(jobs, texts, verdicts, strict=True):
        committed = text + job.tree.token_ids[verdict.path].tolist()  # prefix + root + accepted nodes
        assert cache.lengths[job.slot] == len(committed)
        slot = fresh.allocate()
        prefill_batch(verifier, fresh, [slot], [0], [committed])
        for (keys, values), (keys_ref, values_ref) in zip(cache.entries(job.slot), fresh.entries(slot), strict=True):
            assert torch.allclose(keys, keys_ref, atol=1e-5) and torch.allclose(values, values_ref, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prefill_with_guesses_keeps_the_prefill_and_guesses_after_the_first_token(arch: str) -> None:
    """A prompt's last chunk with its last entry as the anchor: the chunk's states and the cache equal a plain
    prefill (rows in one batch, one without an anchor), and a slot fed the real states of the first token and
    the one after it gives their real rows' logits: the guesses are for the tokens after the first one."""
    from workers.batch_verify import prefill_guessing

    model = tiny_model(arch, num_layers=3)
    verifier = TargetVerifier(model)
    config = HiddenConfig.for_target(model.config, LAYER, K)
    texts = prompts([20, 9])
    plain_cache, cache = slot_cache(model), slot_cache(model)
    plain_slots = [plain_cache.allocate() for _ in texts]
    slots = [cache.allocate() for _ in texts]
    plain = prefill_batch(verifier, plain_cache, plain_slots, [0, 0], texts)
    continued = texts[0] + torch.randint(3, 96, (K,), generator=torch.Generator().manual_seed(4)).tolist()
    fed = layer_states(model, continued)[20: 20 + K][None, None]  # the first token's and the next ones' states
    fed = torch.cat([fed, torch.zeros_like(fed)])  # row 1 has no anchor: its padding slots hold anything
    states, guesses = prefill_guessing(verifier, cache, slots, [0, 0], texts, FixedSlots(config, fed),  # type: ignore[arg-type]
                                       [(19,), ()])
    for mine, ref in zip(states, plain, strict=True):
        assert torch.allclose(mine, ref, atol=1e-5) and torch.equal(mine.argmax(-1), ref.argmax(-1))
    for slot, plain_slot in zip(slots, plain_slots, strict=True):
        assert cache.lengths[slot] == plain_cache.lengths[plain_slot]
        for (keys, values), (keys_ref, values_ref) in zip(cache.entries(slot), plain_cache.entries(plain_slot),
                                                          strict=True):
            assert torch.allclose(keys, keys_ref, atol=1e-5) and torch.allclose(values, values_ref, atol=1e-5)
    assert guesses[1] is None and guesses[0] is not None and guesses[0].shape == (K, 96)
    with torch.no_grad():
        expected = model(torch.tensor([continued])).logits[0, 20: 20 + K]
    assert torch.allclose(guesses[0], expected, atol=1e-4)
