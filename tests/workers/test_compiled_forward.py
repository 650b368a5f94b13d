"""verifier.compile: the compiled verification forward on bucketed shapes gives the eager forward's
verdicts, and once its buckets are warm it compiles nothing more (a counting backend stands in for
inductor, whose compilations take tens of seconds on this CPU)."""

from __future__ import annotations

from typing import Any

import torch

from protocol.params import SamplingParams
from tests.models import tiny_model
from workers.batch_verify import VerifyJob, prefill_batch, verify_batch
from workers.compiled_forward import KV_BUCKET, CompiledForward, bucket, bucketed_key_length
from workers.slot_cache import SlotCache
from workers.target import TargetVerifier
from workers.tree import DraftTree

PROMPTS = [[5, 6, 7, 8, 9, 10], list(range(20, 47)), [40, 41, 42, 40, 41], list(range(3, 17))]
SCHEDULE = [([0, 1, 2], 3), ([0, 1], 0), ([0, 1, 2, 3], 6), ([2], 1), ([1, 3], 7), ([0, 2, 3], 2)]


class CountingBackend:
    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: Any, example_inputs: Any) -> Any:
        self.graphs += 1
        return graph.forward


def tree_of(num_nodes: int, seed: int) -> DraftTree:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 96, (num_nodes,), generator=generator).tolist()
    parents = [-1 if i < 2 else int(torch.randint(0, i, (1,), generator=generator)) for i in range(num_nodes)]
    return DraftTree.from_lists(tokens, parents, [0.5] * num_nodes)


def serve(target: TargetVerifier, cache: SlotCache, slots: list[int], rounds: int) -> list[Any]:
    lengths = [len(p) - 1 for p in PROMPTS]
    roots = [p[-1] for p in PROMPTS]
    prefill_batch(target, cache, slots, [0] * len(slots), [p[:-1] for p in PROMPTS])
    verdicts = []
    for round_ in range(rounds):
        for rows, num_nodes in SCHEDULE:
            tree = tree_of(num_nodes, round_ * 10 + num_nodes)
            jobs = [VerifyJob(slots[r], lengths[r], roots[r], tree, SamplingParams()) for r in rows]
            for r, verdict in zip(rows, verify_batch(target, cache, jobs), strict=True):
                committed = [*tree.token_ids[verdict.path].tolist(), verdict.bonus]
                lengths[r] += len(committed)
                roots[r] = committed[-1]
                verdicts.append(verdict)
    return verdicts


def test_compiled_verification_equals_eager_and_stops_compiling() -> None:
    torch._dynamo.reset()
    eager = TargetVerifier(tiny_model("llama", seed=11))
    compiled = TargetVerifier(tiny_model("llama", seed=11))
    max_width = 8
    eager_cache = SlotCache.for_model(eager.config, 4, 300, torch.float32, "cpu")
    cache = SlotCache.for_model(compiled.config, 5, 300, torch.float32, "cpu")
    backend = CountingBackend()
    compiled.compiled = CompiledForward(compiled.decoder, cache, max_width, backend)
    want = serve(eager, eager_cache, [eager_cache.allocate() for _ in PROMPTS], rounds=2)
    slots = [cache.allocate() for _ in PROMPTS]
    got = serve(compiled, cache, slots, rounds=1)
    warm = backend.graphs
    got += serve(compiled, cache, slots, rounds=2)[len(got):]  # a fresh pass over the same buckets
    assert warm > 0 and backend.graphs == warm  # no recompilation once the buckets were seen
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.path, b.path) and a.bonus == b.bonus
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
    shapes = compiled.compiled.shapes
    assert shapes and {w for _, w, _ in shapes} <= {1, 2, 4, 8} and {b for b, _, _ in shapes} <= {1, 2, 4}
    assert {k for _, _, k in shapes} <= {KV_BUCKET, 300}


def test_buckets() -> None:
    assert [bucket(n) for n in (1, 2, 3, 5, 9, 33)] == [1, 2, 4, 8, 16, 64]
    assert bucketed_key_length(1, 1000) == KV_BUCKET and bucketed_key_length(KV_BUCKET + 1, 1000) == 2 * KV_BUCKET
    assert bucketed_key_length(900, 1000) == 1000  # never past the slot
