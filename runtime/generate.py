"""In-process speculative generation: the sync draft -> verify -> commit loop on one device set.

The same objects run inside the worker processes; this loop is what the coordinator does for one
request, minus the sockets. With no drafter it is plain autoregressive decoding by the verifier.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from runtime.stats import SpecStats
from runtime.stopping import StopRules, apply_stop
from workers.drafters.base import Drafter
from workers.sampling import SamplingParams, choose_tokens
from workers.target import TargetVerifier, VerifierState
from workers.tree import DraftTree
from workers.tree_policy import TreeConfig
from workers.verification import committed_features, verify_and_accept


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only
    finish_reason: str  # "stop" | "length"
    stats: SpecStats = field(default_factory=SpecStats)


def speculative_generate(target: TargetVerifier, drafter: Drafter | None, prompt_ids: Sequence[int],
                         params: SamplingParams | None = None, rules: StopRules | None = None,
                         tree: TreeConfig | None = None) -> GenerationResult:
    """Generate after `prompt_ids`; greedy output equals `model.generate(do_sample=False)`."""
    params = (params or SamplingParams()).with_seed()
    rules = rules or StopRules()
    tree = tree or TreeConfig()
    target.check_prompt(prompt_ids, rules.max_new_tokens)
    if drafter is not None:
        drafter.check_target(target.vocab_size, target.hidden_size)
    start = time.perf_counter()
    state = VerifierState()
    logits, features = target.prefill(state, prompt_ids)
    first = int(choose_tokens(logits[None], params, torch.tensor([len(prompt_ids)]))[0])
    generated, reason = apply_stop([first], 0, rules)
    committed = [*prompt_ids, *generated]
    session = drafter.open(committed, tree, features) if drafter is not None and reason is None else None
    stats = SpecStats()
    while reason is None:
        draft = session.draft() if session is not None else DraftTree.empty()
        path, bonus, hidden = verify_and_accept(target, state, len(committed), committed[-1], draft, params,
                                                tree.total_tokens)
        new_tokens = [*draft.token_ids[path].tolist(), bonus]
        kept, reason = apply_stop(new_tokens, len(generated), rules)
        stats.record(len(path), draft.max_depth, len(kept))
        generated += kept
        committed += kept
        if session is not None and reason is None:
            session.commit(new_tokens, committed_features(hidden, path))
    stats.elapsed_s = time.perf_counter() - start
    stats.num_reroot_hits = session.num_reroot_hits if session is not None else 0
    return GenerationResult(generated, reason, stats)
