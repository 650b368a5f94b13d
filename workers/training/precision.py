"""Where drafter training runs and in which dtypes, and its peak memory.

Mixed precision: the frozen target is stored and run in `dtype` (its weights and activations, no grad).
The drafter keeps fp32 master weights, gradients and AdamW moments; with bfloat16 its forward and backward
run under torch.autocast (bf16 matmuls, fp32 reductions and losses) and the frozen embedding / LM head it
borrows from the target are held in bf16. With float16 the target runs in fp16 but the drafter computes in
fp32: fp16 autocast would need loss scaling, and the drafter is a small share of the work.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    device: str = "cpu"  # cpu, cuda, cuda:N
    dtype: str = "float32"  # the frozen target's dtype; bfloat16 also autocasts the drafter

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch sees no CUDA device")

    @property
    def target_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_autocast(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def head_dtype(self) -> torch.dtype:
        """dtype of the drafter's frozen embedding / LM head copies."""
        return torch.bfloat16 if self.is_autocast else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The context the drafter's forward runs in (a no-op unless bfloat16)."""
        if not self.is_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)


def peak_memory_bytes(device: str) -> int:
    """Peak memory so far: torch's allocated CUDA memory on a GPU; the process's peak RSS on CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)
