"""Command line of scripts/bench.py: one benchmark of Tandem against the peers a user would pick instead.

    python scripts/bench.py                                   # every method, shipped prompts, demo config
    python scripts/bench.py --methods 'hf-generate,tandem-async-*' --max-new-tokens 64 --repeats 2
    python scripts/bench.py --trace                           # + trace.json (Perfetto) and gantt.png
    python scripts/bench.py --scale                           # random-weight target + oracle drafter
    python scripts/bench.py --costs                           # verify / drafter / generate step costs
    python scripts/bench.py --concurrency 1,4,16,64           # under load: c requests in flight per level
    python scripts/bench.py --concurrency 1,8 --num-requests 32 --methods 'hf-generate*,tandem-async-falcon'

--concurrency runs the load mode instead: at each level c, every method keeps c requests in flight (a closed
loop) until --num-requests (default: max(c, number of prompts)) have been served, the prompts cycled, each
exactly --max-new-tokens (EOS ignored). Methods: hf-generate (left-padded batches of c), hf-generate-batch
(transformers' continuous batching), tandem-off and tandem-<sync|async>-<drafter> (one deployment each,
streamed through AsyncClient). Writes results_load.json, results_load.md, load_throughput.png and
load_latency.png: tokens/s, TTFT and ITL p50/p90, τ, verifier busy, peak RSS, equality to batch-1 generate.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from runtime.bench import scale
from runtime.bench.load import load_methods, run_load
from runtime.bench.load import write_outputs as write_load_outputs
from runtime.bench.load_metrics import parse_levels
from runtime.bench.load_records import LoadSettings
from runtime.bench.machine import deployment_cores, one_core
from runtime.bench.peers import PEERS
from runtime.bench.prompts import SHIPPED_PROMPTS, load_prompts, write_shipped_prompts
from runtime.bench.records import BenchSettings
from runtime.bench.runner import DRAFTERS, Plan, all_methods, run, select_methods, write_outputs
from runtime.bench.tandem import base_data
from runtime.config import TandemConfig, resolve_model_path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml", help="base deployment YAML (placement, tree)")
    p.add_argument("--methods", help="comma list of method names or globs (default: all; --list-methods)")
    p.add_argument("--list-methods", action="store_true", help="print the method names and exit")
    p.add_argument("--prompts", help=f"JSONL with a 'prompt' field (default: {SHIPPED_PROMPTS.name}, 8 held-out)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (checked against hf-generate)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled runs")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the prompts after one warm-up")
    p.add_argument("--threads", type=int, help="torch threads of each Tandem worker (default: the config's)")
    p.add_argument("--device", help="device of the verifier and the peers (default: the config's verifier)")
    p.add_argument("--falcon", help="Falcon drafter folder (default: the config's, else models/demo/falcon)")
    p.add_argument("--draft", default="models/demo/draft", help="small LM: the `model` drafter and HF's assistant")
    p.add_argument("--out", default="bench_out", help="output folder")
    p.add_argument("--trace", action="store_true", help="one extra traced async run: trace.json + gantt.png")
    p.add_argument("--trace-window-ms", type=float, default=300.0,
                   help="the Gantt shows the middle this-many ms of the trace (0 = all of it)")
    p.add_argument("--scale", action="store_true", help="random-weight target of a realistic shape + oracle")
    p.add_argument("--scale-shape", help="layers,hidden,heads,kv_heads,intermediate,vocab "
                   "(default: Llama-3-8B-like on GPU, 8,1024,16,4,3584,32000 on CPU)")
    p.add_argument("--scale-dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the random target (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--scale-prompt-tokens", type=int, default=64, help="length of scale mode's random prompts")
    p.add_argument("--scale-dir", default=str(scale.CACHE_DIR), help="where random targets are cached")
    p.add_argument("--oracle-accept-prob", type=float, default=0.8)
    p.add_argument("--oracle-step-ms", type=float, default=0.0, help="simulated cost of one oracle step")
    p.add_argument("--costs", action="store_true", help="measure the cost picture of this machine and exit")
    p.add_argument("--concurrency", type=_levels, metavar="C1,C2,...",
                   help="load mode: comma list of requests in flight (e.g. 1,4,16,64)")
    p.add_argument("--num-requests", type=_positive, help="load mode: requests per level (default: max(c, prompts))")
    p.add_argument("--write-prompts", metavar="PATH", help="cut the shipped prompt set again and exit")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # one progress bar: the bench's (children inherit)
    logging.basicConfig(level=logging.WARNING, format="bench: %(levelname)s %(name)s: %(message)s")
    if args.write_prompts:
        records = write_shipped_prompts(args.write_prompts, TandemConfig.load(args.config).verifier.model)
        print(f"wrote {len(records)} prompts to {args.write_prompts}")
        return
    if args.costs:
        from runtime.bench.costs import run_costs

        config = TandemConfig.load(args.config)
        falcon = args.falcon or "models/demo/falcon"
        print(run_costs(config, {"falcon": resolve_model_path(falcon, None),
                                 "model": resolve_model_path(args.draft, None)}, args.threads or 1, Path(args.out)))
        return
    plan, settings = scale_plan(args) if args.scale else demo_plan(args)
    available = load_methods(tuple(plan.drafters)) if args.concurrency else \
        all_methods(tuple(plan.drafters), ("hf-generate",) if args.scale else PEERS, plan.device == "cpu")
    if args.list_methods:
        print("\n".join(available))
        return
    methods = select_methods(args.methods, available)
    if any(m.endswith("-useless") for m in methods):
        random_draft(resolve_model_path(args.draft, None), Path(plan.drafters["useless"]["model"]))
    out = Path(args.out)
    if args.concurrency:
        load_result = run_load(plan, methods, LoadSettings.of(settings, args.concurrency, args.num_requests), out)
        print(write_load_outputs(load_result, out))
        print(f"results: {out / 'results_load.json'}, {out / 'results_load.md'}, plots: {out}/load_*.png")
        return
    result = run(plan, methods, settings, out)
    print(write_outputs(result, out))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, plots: {out}/*.png")


def _levels(text: str) -> list[int]:
    try:
        return parse_levels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _base(args: argparse.Namespace) -> tuple[TandemConfig, dict[str, Any]]:
    config = TandemConfig.load(args.config)
    data = base_data(args.config)
    if args.device:
        data["verifier"]["device"] = args.device
    if args.threads:
        for role in ("verifier", "drafter"):
            if data.get(role):
                data[role]["num_threads"] = args.threads
    return config, data


def _plan(args: argparse.Namespace, config: TandemConfig, data: dict[str, Any], **fields: Any) -> Plan:
    import torch

    device = data["verifier"].get("device", "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[data["verifier"].get("dtype", "float32")]
    return Plan(config_path=args.config, base=data, dtype=dtype, device=device, cores=deployment_cores(config),
                one_core=one_core(config), trace_window_ms=args.trace_window_ms or None, **fields)


def demo_plan(args: argparse.Namespace) -> tuple[Plan, BenchSettings]:
    from runtime.builders import load_tokenizer

    config, data = _base(args)
    falcon: str = args.falcon or (config.drafter.model if config.drafter and config.drafter.kind == "falcon"
                                  and config.drafter.model else "models/demo/falcon")
    drafters = {"falcon": {"model": resolve_model_path(falcon, None)},
                "model": {"model": resolve_model_path(args.draft, None)}, "ngram": {},
                # the draft model's shape with random weights: what speculation costs when it never pays
                "useless": {"kind": "model", "model": str(Path.home() / ".cache" / "tandem" / "useless-draft")}}
    tokenizer = load_tokenizer(config.verifier.model)
    texts = load_prompts(args.prompts or SHIPPED_PROMPTS)
    if tokenizer is None:
        raise SystemExit(f"{config.verifier.model} has no tokenizer: text prompts need one (or use --scale)")
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    kind = config.drafter.kind if config.drafter and config.drafter.kind in DRAFTERS else "falcon"
    plan = _plan(args, config, data, drafters=drafters, target_dir=config.verifier.model,
                 assistant_dir=drafters["model"]["model"], label=f"Tandem vs peers ({Path(args.config).name})",
                 trace_drafter=kind if args.trace else None)
    return plan, _settings(args, prompts)


def scale_plan(args: argparse.Namespace) -> tuple[Plan, BenchSettings]:
    import torch

    if args.temperature != 0:
        raise SystemExit("--scale is greedy only: the oracle proposes the target's greedy continuation")
    config, data = _base(args)
    device = data["verifier"].get("device", "cpu")
    shape = scale.TargetShape(*(int(x) for x in args.scale_shape.split(","))) if args.scale_shape \
        else scale.default_shape(device)
    dtype_name = args.scale_dtype or scale.default_dtype(device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    target = scale.build_target(shape, dtype, device, Path(args.scale_dir))
    data["verifier"].update(model=str(target), dtype=dtype_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reference = out / "oracle_reference.json"
    num_prompts = len(load_prompts(args.prompts or SHIPPED_PROMPTS))
    prompts = scale.random_prompts(num_prompts, args.scale_prompt_tokens, shape.vocab_size, args.seed)
    label = (f"scale mode: random-weight target + oracle drafter ({shape.name}, {dtype_name}, "
             f"p = {args.oracle_accept_prob}, step {args.oracle_step_ms} ms)")
    plan = _plan(args, config, data, target_dir=str(target), assistant_dir=None, label=label,
                 drafters={"oracle": scale.oracle_keys(reference, args.oracle_accept_prob, args.oracle_step_ms,
                                                       args.seed)},
                 trace_drafter="oracle" if args.trace else None,
                 before_tandem=lambda base_run: scale.write_references(reference, prompts, base_run.outputs),
                 notes=["scale mode: random-weight target + oracle drafter; the oracle's proposals are the "
                        "target's own greedy tokens, right with probability p; τ and speedups show what a "
                        "drafter of that quality and cost would give, not what a trained drafter gives"])
    return plan, _settings(args, prompts)


def _settings(args: argparse.Namespace, prompts: list[list[int]]) -> BenchSettings:
    return BenchSettings(prompts=prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         seed=args.seed if args.temperature else None, repeats=args.repeats)


def random_draft(draft_dir: str, out_dir: Path) -> Path:
    """A randomly initialised copy of a draft model (same config and tokenizer), saved once."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    if not (out_dir / "config.json").exists():
        import torch

        torch.manual_seed(0)
        auto: Any = AutoModelForCausalLM
        auto.from_config(AutoConfig.from_pretrained(draft_dir)).save_pretrained(out_dir)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (Path(draft_dir) / name).exists():
                shutil.copy(Path(draft_dir) / name, out_dir / name)
    return out_dir
