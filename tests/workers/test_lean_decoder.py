"""The lean forward (workers/lean_decoder.py) computes bitwise what transformers' modules compute: the same
hidden states and the same cache entries, on the slot cache and on a DynamicCache, with and without Hidden
Transfer's slots; decoders it cannot serve are named and run through `decoder(...)`."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from protocol.params import SamplingParams
from tests.models import layer_kv, tiny_model
from tests.workers.drafters.test_falcon import make_drafter, open_session, tiny_target
from tests.workers.test_batch_verify import prompts, random_tree, slot_cache
from workers.batch_mask import Row
from workers.batch_verify import VerifyJob, prefill_batch, verify_batch
from workers.drafters.model import ModelDrafter
from workers.hidden_transfer import HiddenConfig, TransferMaps
from workers.lean_decoder import LeanDecoder, unsupported
from workers.target import TargetVerifier, VerifierState
from workers.tree import DraftTree
from workers.tree_policy import TreeConfig

ARCHS = ["llama", "qwen2", "mistral"]


def _model(arch: str, **overrides: Any) -> Any:
    extra: dict[str, Any] = {"sliding_window": 12} if arch == "mistral" else {}  # prefixes past the window
    extra.update(overrides)
    return tiny_model(arch, num_layers=3, **extra)


def _rows(sizes: list[int], last: list[int]) -> list[Row]:
    return [Row.tree(root, random_tree(n, 96, seed=i) if n else DraftTree.empty())
            for i, (n, root) in enumerate(zip(sizes, last, strict=True))]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sizes", [[0], [0, 0, 0], [7, 0, 3, 12]], ids=["one-root", "roots", "trees"])
def test_lean_rows_equal_the_modules_bit_for_bit(arch: str, sizes: list[int]) -> None:
    """The same batched forward on two copies of one slot cache: hidden states and every written key and
    value identical (torch.equal), for single-query rows (transformers' GQA packing) and trees."""
    model = _model(arch)
    lean, modules = TargetVerifier(model), TargetVerifier(model, lean=False)
    assert lean.lean is not None and modules.lean is None
    texts = prompts([30, 7, 19, 44][: len(sizes)])
    outs, caches = [], []
    for verifier in (lean, modules):
        cache = slot_cache(model)
        slots = [cache.allocate() for _ in texts]
        prefill_batch(verifier, cache, slots, [0] * len(texts), [t[:-1] for t in texts])
        starts = [len(t) - 1 for t in texts]
        outs.append(verifier.forward_rows(cache, slots, starts, _rows(sizes, [t[-1] for t in texts])))
        caches.append(cache)
    assert torch.equal(outs[0], outs[1])
    for (k0, v0), (k1, v1) in zip(caches[0].entries(0, 60), caches[1].entries(0, 60), strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    for a, b in zip(caches[0].keys, caches[1].keys, strict=True):
        assert torch.equal(a, b)  # every slot, scratch room included


@pytest.mark.parametrize("arch", ARCHS)
def test_lean_batch_one_path_equals_the_modules_on_a_dynamic_cache(arch: str) -> None:
    model = _model(arch)
    lean, modules = TargetVerifier(model), TargetVerifier(model, lean=False)
    text, tree = prompts([25])[0], random_tree(9, 96, seed=4)
    results = []
    for verifier in (lean, modules):
        state = VerifierState()
        verifier.prefill(state, text[:-1])
        results.append((*verifier.verify(state, text[-1], tree), state))
    (logits0, hidden0, state0), (logits1, hidden1, state1) = results
    assert torch.equal(logits0, logits1) and torch.equal(hidden0, hidden1)
    for layer0, layer1 in zip(state0.cache.layers, state1.cache.layers, strict=True):
        (k0, v0), (k1, v1) = layer_kv(layer0), layer_kv(layer1)
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_hidden_transfer_forward_equals_the_modules(arch: str) -> None:
    """Hidden Transfer's split forward (real rows to layer l, slots joining above) through either path."""
    model = _model(arch)
    maps = TransferMaps(HiddenConfig.for_target(model.config, 1, 3))
    verdicts = []
    for verifier in (TargetVerifier(model), TargetVerifier(model, lean=False)):
        cache = slot_cache(model)
        texts = prompts([30, 7, 19])
        slots = [cache.allocate() for _ in texts]
        prefill_batch(verifier, cache, slots, [0] * 3, [t[:-1] for t in texts])
        trees = [random_tree(n, 96, seed=i) if n else DraftTree.empty() for i, n in enumerate([8, 0, 3])]
        jobs = [VerifyJob(s, len(t) - 1, t[-1], tree, SamplingParams(), anchors=a)
                for s, t, tree, a in zip(slots, texts, trees, [(0, 3), (0,), (2,)], strict=True)]
        verdicts.append(verify_batch(verifier, cache, jobs, maps))
    for a, b in zip(*verdicts, strict=True):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
        assert (a.guesses is None) == (b.guesses is None)
        assert a.guesses is None or b.guesses is None or torch.equal(a.guesses, b.guesses)
    assert verdicts[0][1].guesses is not None  # the root-only row ends at its anchor: its slots were read


def assert_same_trees(these: list[DraftTree], those: list[DraftTree]) -> None:
    for a, b in zip(these, those, strict=True):
        assert a.num_nodes > 3
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.parents, b.parents)
        assert torch.equal(a.probs, b.probs)


def test_the_draft_model_runs_lean_and_grows_the_same_trees() -> None:
    model = _model("llama")
    lean, modules = ModelDrafter(model), ModelDrafter(model)
    modules.lean = None
    assert lean.lean is not None
    config = TreeConfig(total_tokens=12, depth=4, top_k=3)
    trees = []
    for drafter in (lean, modules):
        sessions = [drafter.open(text, config) for text in prompts([20, 9])]
        for _ in range(2):
            drafter.grow_many(sessions, [None, None])
        trees.append([s.draft() for s in sessions])
    assert_same_trees(*trees)


def test_decoders_it_cannot_serve_are_named_and_left_to_the_modules() -> None:
    eager = tiny_model("llama", attn="eager")
    assert "eager" in str(unsupported(eager.get_decoder()))
    assert LeanDecoder.build(eager.get_decoder()) is None and TargetVerifier(eager).lean is None
    gelu = tiny_model("llama", hidden_act="gelu")
    assert "gelu" in str(unsupported(gelu.get_decoder()))
    hooked = tiny_model("llama")
    hooked.get_decoder().layers[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert "hooks" in str(unsupported(hooked.get_decoder()))
    with pytest.raises(ValueError, match="cannot run lean"):
        LeanDecoder(hooked.get_decoder())
    # a hooked model still verifies, through its modules (the hook doubles the MLP output: it is seen)
    verifier, plain = TargetVerifier(hooked), TargetVerifier(tiny_model("llama"))
    assert verifier.lean is None
    text = prompts([10])[0]
    logits = []
    for v in (verifier, plain):
        state = VerifierState()
        v.prefill(state, text[:-1])
        logits.append(v.verify(state, text[-1], DraftTree.empty())[0])
    assert not torch.equal(logits[0], logits[1])


def test_the_falcon_drafter_runs_lean_and_grows_the_same_trees() -> None:
    """Falcon's decoder layers (Llama layers outside an HF decoder) through LeanLayers in inference; with
    gradients on (training) they run through the modules and still get gradients."""
    target = tiny_target()
    trees = []
    for lean in (True, False):
        drafter = make_drafter(target)
        assert drafter.model.lean is not None
        if not lean:
            drafter.model.lean = None
        config = TreeConfig(total_tokens=16, depth=6, top_k=3)
        sessions = [open_session(drafter, target, p, config) for p in prompts([12, 20])]
        for _ in range(3):
            drafter.grow_many(sessions, [None, None])
        trees.append([s.draft() for s in sessions])
    assert_same_trees(*trees)
    model = make_drafter(target).model
    inputs = torch.randn(1, 5, model.config.hidden_size, requires_grad=True)
    model(inputs, None, torch.arange(5)[None]).sum().backward()
    first: Any = model.layers[0]
    assert inputs.grad is not None and first.self_attn.q_proj.weight.grad is not None
