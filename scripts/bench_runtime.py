"""Runtime benchmark: the deployment of a YAML in off / sync / async mode vs plain `generate`, one run.

For each mode it launches the real processes (coordinator, verifier, drafter), sends the same greedy
prompts through the client one at a time, and measures tokens/s. The baseline is transformers'
`generate` in this process, pinned like the verifier (same cores, same threads). Prints ratios,
writes JSON, a markdown table and a PNG bar chart (when matplotlib is installed).

    python scripts/bench_runtime.py --config configs/demo.yaml --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from bench_prompts import PROMPTS  # scripts/ is on sys.path when run as a script
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.client import Client
from runtime.config import TandemConfig
from runtime.launch import Deployment, config_variant


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--modes", default="off,sync,async")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the prompts per method (best kept)")
    parser.add_argument("--out", default="bench_out/runtime")
    return parser.parse_args()


def baseline(config: TandemConfig, prompts: list[list[int]], max_new: int, repeats: int) -> tuple[float, list[Any]]:
    """transformers' greedy generate, pinned and threaded like the verifier."""
    before = psutil.Process().cpu_affinity()
    if config.verifier.cpu_affinity:
        psutil.Process().cpu_affinity(list(config.verifier.cpu_affinity))
    threads = torch.get_num_threads()
    torch.set_num_threads(config.verifier.num_threads or threads)
    auto: Any = AutoModelForCausalLM
    model = auto.from_pretrained(config.verifier.model, dtype=config.verifier.torch_dtype).eval()
    model.generation_config.eos_token_id = None  # exactly max_new tokens, as the runtime with ignore_eos
    best, outputs = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=max_new)[0, len(p):].tolist()
                   for p in prompts]
        best = min(best, time.perf_counter() - start)
    psutil.Process().cpu_affinity(before)
    torch.set_num_threads(threads)
    return sum(len(o) for o in outputs) / best, outputs


def run_mode(config_path: str, mode: str, prompts: list[list[int]], max_new: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Deployment(str(config_variant(config_path, Path(tmp), mode))) as dep:
        dep.start()
        with Client(dep.config.coordinator.client_address, timeout_s=300) as client:
            client.generate(prompts[0], max_new_tokens=8, ignore_eos=True)  # warm-up
            best, outputs = float("inf"), []
            for _ in range(repeats):
                start = time.perf_counter()
                outputs = [client.generate(p, max_new_tokens=max_new, ignore_eos=True) for p in prompts]
                best = min(best, time.perf_counter() - start)
            metrics = client.metrics()
    return {"mode": mode, "tokens_per_s": sum(len(o.token_ids) for o in outputs) / best,
            "tau": metrics["tau"] or 1.0, "verifier_busy_fraction": metrics["verifier_busy_fraction"],
            "reroot_hit_rate": metrics["reroot_hit_rate"], "outputs": [o.token_ids for o in outputs]}


def main() -> None:
    args = parse_args()
    config = TandemConfig.load(args.config)
    tokenizer = AutoTokenizer.from_pretrained(config.verifier.model)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    base_rate, reference = baseline(config, prompts, args.max_new_tokens, args.repeats)
    rows: list[dict[str, Any]] = [{"mode": "transformers generate", "tokens_per_s": base_rate, "tau": 1.0}]
    for mode in args.modes.split(","):
        row = run_mode(args.config, mode, prompts, args.max_new_tokens, args.repeats)
        row["lossless"] = row.pop("outputs") == reference
        rows.append(row)
    for row in rows:
        row["speedup_vs_generate"] = row["tokens_per_s"] / base_rate
    report(rows, args, config)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, config: TandemConfig) -> None:
    machine = (f"{platform.machine()} CPU, {psutil.cpu_count()} cores; verifier {config.verifier.device} "
               f"cores {config.verifier.cpu_affinity}, drafter {config.drafter.device if config.drafter else '-'} "
               f"cores {config.drafter.cpu_affinity if config.drafter else '-'}")
    by_mode = {r["mode"]: r["tokens_per_s"] for r in rows}
    ratios = {}
    if "async" in by_mode and "sync" in by_mode:
        ratios["async_over_sync"] = by_mode["async"] / by_mode["sync"]
    if "off" in by_mode:
        ratios["off_over_generate"] = by_mode["off"] / by_mode["transformers generate"]
    lines = [f"machine: {machine}", f"config {args.config}, drafter {config.drafter.kind if config.drafter else '-'}, "
             f"{args.max_new_tokens} new tokens x {len(PROMPTS)} prompts, greedy", "",
             "| method | tokens/s | speedup vs generate | τ | verifier busy | re-root hits | output == generate |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['tokens_per_s']:.1f} | {r['speedup_vs_generate']:.2f}x | {r['tau']:.2f} | "
                     f"{r.get('verifier_busy_fraction', 1.0):.2f} | {r.get('reroot_hit_rate', 0.0):.2f} | "
                     f"{r.get('lossless', True)} |")
    lines += ["", *(f"{k}: {v:.3f}" for k, v in ratios.items())]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows, "ratios": ratios}, indent=2))
    plot(rows, out / "results.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([r["mode"] for r in rows], [r["tokens_per_s"] for r in rows], color="#4477aa")
    ax.set_ylabel("tokens/s")
    ax.set_title("Tandem runtime vs transformers generate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
