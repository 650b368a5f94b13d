"""The cost picture of one machine: verify cost by tree size, drafter step cost, and transformers'
per-token `generate` cost, at a context of ~200 tokens (`scripts/bench.py --costs`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig

TREE_SIZES = (0, 1, 4, 8, 16, 32)
FANOUT = 4  # the "tree" shape: breadth-first, 4 children per node


def chain(num_nodes: int) -> DraftTree:
    parents = [ROOT, *range(num_nodes - 1)][:num_nodes]
    return DraftTree.from_lists(list(range(3, 3 + num_nodes)), parents, [0.5] * num_nodes)


def bushy(num_nodes: int) -> DraftTree:
    """Breadth-first tree with FANOUT children per node."""
    parents = [ROOT if i < FANOUT else (i - FANOUT) // FANOUT for i in range(num_nodes)]
    return DraftTree.from_lists([3 + i % 50 for i in range(num_nodes)], parents, [0.5] * num_nodes)


def median_ms(action: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up and is dropped
        if setup is not None:
            setup()
        start = time.perf_counter()
        action()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[1:])


def verify_costs(target_dir: str, context: list[int], repeats: int) -> list[dict[str, Any]]:
    from workers.target import TargetVerifier, VerifierState

    verifier = TargetVerifier.from_pretrained(target_dir)
    state = VerifierState()
    verifier.prefill(state, context[:-1])
    length = state.length
    rows = []
    for shape, build in (("chain", chain), ("tree", bushy)):
        for size in TREE_SIZES if shape == "chain" else TREE_SIZES[1:]:  # root only is one row
            tree = build(size)

            def forward(tree: DraftTree = tree) -> None:
                verifier.verify(state, context[-1], tree)

            ms = median_ms(forward, repeats, lambda: verifier.rollback(state, length))
            verifier.rollback(state, length)
            what = f"verify root + {size} nodes ({shape})" if size else "verify root only"
            rows.append({"what": what, "ms": ms})
    return rows


def drafter_step_costs(target_dir: str, drafters: dict[str, str], context: list[int], repeats: int,
                       tree: TreeConfig) -> list[dict[str, Any]]:
    """Median ms of one `grow()` right after a session is (re)opened on the context."""
    from workers.drafters.falcon import FalconDrafter
    from workers.drafters.model import ModelDrafter
    from workers.target import TargetVerifier, VerifierState

    verifier = TargetVerifier.from_pretrained(target_dir)
    features = verifier.prefill(VerifierState(), context[:-1])[1]
    rows = []
    for kind, path in drafters.items():
        drafter = FalconDrafter.from_pretrained(path, target_dir) if kind == "falcon" else \
            ModelDrafter.from_pretrained(path)
        session = drafter.open(context, tree, features)

        def reopen(session: Any = session) -> None:
            session.reset(context, features)

        ms = median_ms(session.grow, repeats, reopen)
        rows.append({"what": f"drafter step ({kind}, top_k {tree.top_k})", "ms": ms})
    return rows


def generate_step_costs(target_dir: str, context: list[int], threads: tuple[int, ...], repeats: int,
                        num_new: int = 32) -> list[dict[str, Any]]:
    """Per-token cost of transformers' greedy `generate`: (t(1 + n new) - t(1 new)) / n."""
    from workers.hf_model import load_causal_lm

    model = load_causal_lm(target_dir)
    model.generation_config.eos_token_id = None
    ids = torch.tensor([context])
    before = torch.get_num_threads()
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        def gen(n: int) -> Callable[[], Any]:
            return lambda: model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                          pad_token_id=model.generation_config.pad_token_id)
        ms = (median_ms(gen(1 + num_new), repeats) - median_ms(gen(1), repeats)) / num_new
        rows.append({"what": f"hf generate step ({count} thread{'s' if count > 1 else ''})", "ms": ms})
    torch.set_num_threads(before)
    return rows


FORWARD_POSITIONS = (1, 2, 4, 8, 16, 32)


def forward_costs(target_dir: str, falcon_dir: str | None, draft_dir: str | None, context: list[int],
                  repeats: int, positions: tuple[int, ...] = FORWARD_POSITIONS) -> list[dict[str, Any]]:
    """Median ms of one forward pass over n new positions after `context` is cached, logits
    included, for the target, the Falcon drafter (its layers and fc on fused pairs, the target's LM
    head) and the AR draft model; each drafter row carries its ratio to the target at the same n."""
    from workers.drafters.falcon_model import FalconDrafterModel
    from workers.hf_model import load_causal_lm
    from workers.kv_cache import crop, new_cache

    def hf_forward(model: Any) -> Callable[[int], float]:
        cache = new_cache()
        with torch.no_grad():
            model(input_ids=torch.tensor([context]), past_key_values=cache, use_cache=True)
        start = len(context)

        def run(n: int) -> float:
            ids = torch.tensor([[context[i % start] for i in range(n)]])
            with torch.no_grad():
                return median_ms(lambda: model(input_ids=ids, past_key_values=cache, use_cache=True),
                                 repeats, lambda: crop(cache, start))
        return run

    def falcon_forward(model: FalconDrafterModel) -> Callable[[int], float]:
        hidden = model.config.hidden_size
        cache = new_cache()
        start = len(context)
        with torch.no_grad():
            pairs = model.fuse(torch.randn(1, start, hidden), torch.tensor([context]))
            model(pairs, None, torch.arange(start)[None], cache)

        def run(n: int) -> float:
            features, ids = torch.randn(1, n, hidden), torch.tensor([context[:n]])
            mask = torch.zeros(1, 1, n, start + n)
            mask[0, 0, :, start:] = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
            positions_ids = torch.arange(start, start + n)[None]

            def step() -> None:
                with torch.no_grad():
                    model.logits(model(model.fuse(features, ids), mask, positions_ids, cache))
            return median_ms(step, repeats, lambda: crop(cache, start))
        return run

    runners = {"target": hf_forward(load_causal_lm(target_dir))}
    if falcon_dir:
        runners["falcon"] = falcon_forward(FalconDrafterModel.load(falcon_dir, target_dir))
    if draft_dir:
        runners["AR draft"] = hf_forward(load_causal_lm(draft_dir))
    rows = []
    for n in positions:
        base = runners["target"](n)
        rows.append({"what": f"target forward, {n} positions", "ms": base, "positions": n, "model": "target"})
        for name, run in list(runners.items())[1:]:
            ms = run(n)
            rows.append({"what": f"{name} forward, {n} positions", "ms": ms, "positions": n, "model": name,
                         "ratio_to_target": ms / base})
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| what | ms |", "|---|---|", *(f"| {r['what']} | {r['ms']:.2f} |" for r in rows)]
    return "\n".join(lines) + "\n"


def run_costs(config: Any, drafters: dict[str, str], threads: int, out_dir: Any, context_len: int = 200,
              repeats: int = 10) -> str:
    """All three measurements on the config's target; writes costs.json / costs.md into `out_dir`."""
    import json
    import platform

    torch.set_num_threads(threads)
    context = [3 + (i * 7919) % 200 for i in range(context_len)]  # fixed ids, no tokenizer needed
    target = config.verifier.model
    rows = verify_costs(target, context, repeats)
    rows += drafter_step_costs(target, drafters, context, repeats, config.speculation.tree)
    rows += generate_step_costs(target, context, (1, 2), max(repeats // 3, 2))
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"cost picture: {platform.machine()}, target {target}, context {context_len} tokens, "
              f"{threads} torch thread(s) for verify and drafters, fp32, median of {repeats}")
    (out_dir / "costs.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    text = markdown(rows, header)
    (out_dir / "costs.md").write_text(text)
    return text
