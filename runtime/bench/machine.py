"""What the benchmark ran on, and what each method was given: machine facts and CPU placement."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from runtime.config import TandemConfig


def cpu_model(cpuinfo: str | None = None) -> str:
    """The `model name` line of /proc/cpuinfo (or the platform's processor string)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(num_gpus)]
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu_model(),
            "num_cores": psutil.cpu_count(logical=True), "num_physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "gpus": gpus}


def deployment_cores(config: TandemConfig) -> list[int]:
    """The union of the verifier's and drafter's `cpu_affinity`; all of this process's cores when unpinned."""
    cores: set[int] = set(config.verifier.cpu_affinity or ())
    if config.drafter is not None:
        cores.update(config.drafter.cpu_affinity or ())
    return sorted(cores) if cores else sorted(psutil.Process().cpu_affinity() or [])


def one_core(config: TandemConfig) -> list[int]:
    """The single core of the `(1 core)` rows: the verifier's first core."""
    return [(config.verifier.cpu_affinity or deployment_cores(config))[0]]


@contextlib.contextmanager
def pinned(cores: list[int], num_threads: int) -> Iterator[None]:
    """Run this process on `cores` with `num_threads` torch threads, restoring both afterwards."""
    import torch

    process = psutil.Process()
    before_cores, before_threads = process.cpu_affinity(), torch.get_num_threads()
    process.cpu_affinity(cores)
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        process.cpu_affinity(before_cores)
        torch.set_num_threads(before_threads)
