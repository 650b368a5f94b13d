"""Tandem methods: one real deployment (coordinator + verifier + drafter processes) per method,
written as a YAML variant of the base config with fresh ports, driven through `runtime.client.Client`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from protocol.trace import ENV_VAR
from runtime.bench.records import BenchSettings, MethodRun, RequestRecord
from runtime.bench.sampler import ProcessSampler
from runtime.client import Client
from runtime.config import REPO_ROOT, TandemConfig
from runtime.config_schema import LimitsConfig
from runtime.launch import Deployment, free_port

MODES = ("off", "sync", "async")
# methods that are a drafter plus settings elsewhere in the YAML: name -> (drafter kind or None, sections to merge,
# lossy?). A lossy method's output is not compared with the reference: the table says "lossy".
HIDDEN = {"verifier": {"hidden_transfer": str(REPO_ROOT / "models" / "demo" / "hidden")}}
VARIANTS: dict[str, tuple[str | None, dict[str, dict[str, Any]], bool]] = {
    "hidden": (None, HIDDEN, False),  # Hidden Transfer alone: the verifier drafts for itself
    "falcon-hidden": ("falcon", HIDDEN, False),
    "falcon-cand3": ("falcon", {"speculation": {"target_candidates": 3}}, True),
}
PLACEMENT_KEYS = ("dtype", "device", "cpu_affinity", "num_threads", "attn_implementation")
CLIENT_TIMEOUT_S = 900.0


def method_name(mode: str, drafter: str | None) -> str:
    return "tandem-off" if mode == "off" else f"tandem-{mode}-{drafter}"


def parse_method(name: str) -> tuple[str, str | None]:
    """("async", "falcon") from "tandem-async-falcon"; ("off", None) from "tandem-off"."""
    parts = name.split("-", 2)
    if parts[0] != "tandem" or len(parts) < 2 or parts[1] not in MODES or (parts[1] == "off") != (len(parts) == 2):
        raise ValueError(f"not a Tandem method name: {name!r} (expected tandem-off or tandem-<sync|async>-<drafter>)")
    return parts[1], parts[2] if len(parts) == 3 else None


def base_data(config_path: str) -> dict[str, Any]:
    """The base YAML as a dict, with the verifier's model path made absolute."""
    data: dict[str, Any] = yaml.safe_load(Path(config_path).read_text())
    data["verifier"]["model"] = TandemConfig.load(config_path).verifier.model
    return data


def drafter_section(base: dict[str, Any], kind: str, keys: dict[str, Any]) -> dict[str, Any]:
    """A drafter section of `kind` on the base drafter's placement (or the verifier's when it has none)."""
    placement = base.get("drafter") or base["verifier"]
    return {"kind": kind, **{k: placement[k] for k in PLACEMENT_KEYS if k in placement}, **keys}


def write_variant(base: dict[str, Any], out_dir: Path, name: str, mode: str, drafter: dict[str, Any] | None,
                  max_new_tokens: int, concurrency: int = 1, sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """The YAML of one method: base config, this mode and drafter, free ports, room for the request, and for
    `concurrency` requests running on the verifier at once (the load mode); `sections` are merged in (VARIANTS)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items() if k != "drafter"}
    for section, keys in (sections or {}).items():
        data[section] = {**(data.get(section) or {}), **keys}
    data.setdefault("speculation", {})["mode"] = mode
    if drafter is not None:
        data["drafter"] = drafter
    data["verifier"] = with_free_cores(data["verifier"], base.get("drafter"), mode, drafter)
    data["coordinator"] = {**(data.get("coordinator") or {}), "client_address": f"tcp://127.0.0.1:{free_port()}",
                           "worker_address": f"tcp://127.0.0.1:{free_port()}"}
    limits = dict(data.get("limits") or {})
    limits["max_new_tokens"] = max(int(limits.get("max_new_tokens", 1024)), max_new_tokens)
    limits["request_timeout_s"] = max(float(limits.get("request_timeout_s", 120)), CLIENT_TIMEOUT_S)
    for key in ("max_running_per_verifier", "max_queued_requests"):
        limits[key] = max(int(limits.get(key, getattr(LimitsConfig(), key))), concurrency)
    data["limits"] = limits
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_free_cores(verifier: dict[str, Any], base_drafter: dict[str, Any] | None, mode: str,
                    drafter: dict[str, Any] | None) -> dict[str, Any]:
    """Placement that fits: a drafter that needs no model (ngram), or none at all (off), leaves its CPU
    cores to the verifier, which then runs one torch thread per core it has."""
    needs_cores = mode != "off" and drafter is not None and drafter.get("kind") != "ngram"
    spare = (base_drafter or {}).get("cpu_affinity") or []
    if needs_cores or not spare or verifier.get("device", "cpu") != "cpu" or not verifier.get("cpu_affinity"):
        return verifier
    cores = sorted(set(verifier["cpu_affinity"]) | set(spare))
    return {**verifier, "cpu_affinity": cores, "num_threads": len(cores)}


@contextlib.contextmanager
def tracing(folder: Path | None) -> Iterator[None]:
    """Child processes started inside record timeline spans into `folder` (protocol/trace.py)."""
    if folder is None:
        yield
        return
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def placement_of(config: TandemConfig) -> dict[str, Any]:
    sections = {"verifier": config.verifier, "drafter": config.drafter if config.uses_drafter else None}
    return {role: {"device": s.device, "cores": list(s.cpu_affinity or []), "threads": s.num_threads}
            for role, s in sections.items() if s is not None}


def run_tandem(name: str, config_path: Path, settings: BenchSettings, on_request: Callable[[], None],
               trace_dir: Path | None = None) -> MethodRun:
    """Start the deployment, warm it up, time `repeats` passes over the prompts, read its metrics."""
    with tracing(trace_dir), Deployment(str(config_path)) as deployment:
        deployment.start()
        run = MethodRun(name, "tandem", placement_of(deployment.config))
        pids = {role: process.pid for role, process in deployment.processes.items()}
        address = deployment.config.coordinator.client_address
        with Client(address, timeout_s=CLIENT_TIMEOUT_S) as client, ProcessSampler(pids) as sampler:
            _generate(client, settings.prompts[0], settings, settings.warmup_tokens)
            on_request()
            sampler.start_cpu_window()
            for _ in range(settings.repeats):
                records = []
                for prompt in settings.prompts:
                    start = time.perf_counter()
                    out = _generate(client, prompt, settings, settings.max_new_tokens)
                    records.append(RequestRecord(out.token_ids, time.perf_counter() - start, dict(out.stats)))
                    on_request()
                run.passes.append(records)
            run.metrics = client.metrics()
        run.peak_rss_mb, run.cpu_util = sampler.peak_rss_mb, sampler.cpu_util
    return run


def _generate(client: Client, prompt: list[int], settings: BenchSettings, max_new_tokens: int) -> Any:
    return client.generate(prompt, max_new_tokens=max_new_tokens, temperature=settings.temperature,
                           seed=settings.seed, ignore_eos=True)
