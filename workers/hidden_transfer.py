"""Hidden Transfer maps (seed 002, arXiv 2404.12022): k learned linear maps that turn a node's real hidden
state after the target's first `layer` decoder layers into pseudo hidden states for the k positions after
the node's bonus token; the pseudo states then run through the target's remaining layers (see
workers/hidden_forward.py) and its LM head guesses the tokens there. Saved as `hidden_config.json` +
`model.safetensors` in one directory (YAML `verifier.hidden_transfer`).

Offsets: a node at position p has a real row whose logits give the bonus x[p+1]. Pseudo slot j (0 <= j < k)
stands for the row at position p+1+j (its position id), so its logits guess x[p+2+j]: slot 0 guesses the
token after the bonus, and so on. It sees the real keys up to p and the earlier slots of the same node.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "hidden_config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class HiddenConfig:
    """Where the maps sit in their target and how many positions they guess.

    layer: pseudo states are made from the output of decoder layers [0, layer) and pass layers [layer, L).
    num_offsets: k, pseudo slots per node. The target's shape is kept to refuse a mismatched target.
    """

    layer: int
    num_offsets: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    target: str = ""  # the target checkpoint's directory name when trained (informative)

    def __post_init__(self) -> None:
        for key in ("layer", "num_offsets", "hidden_size", "num_layers", "vocab_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"hidden_transfer.{key} must be a positive integer, got {value!r}")
        if self.layer >= self.num_layers:
            raise ValueError(f"hidden_transfer.layer must be below the target's {self.num_layers} layers "
                             f"(pseudo states must pass at least one layer), got {self.layer}")

    @classmethod
    def for_target(cls, target_config: Any, layer: int, num_offsets: int, target: str = "") -> HiddenConfig:
        text = getattr(target_config, "text_config", None) or target_config
        return cls(layer, num_offsets, int(text.hidden_size), int(text.num_hidden_layers), int(text.vocab_size),
                   target)

    def check_target(self, target_config: Any, where: str = "hidden_transfer") -> None:
        """Raise ValueError naming every shape that differs from the target's."""
        text = getattr(target_config, "text_config", None) or target_config
        actual = {"hidden_size": int(text.hidden_size), "num_layers": int(text.num_hidden_layers),
                  "vocab_size": int(text.vocab_size)}
        wrong = [f"{key} {getattr(self, key)} (target: {value})" for key, value in actual.items()
                 if getattr(self, key) != value]
        if wrong:
            raise ValueError(f"{where}: the maps were trained for another target: {', '.join(wrong)}")


class TransferMaps(nn.Module):
    """W_1 .. W_k as one affine map H -> k*H (initialised to k identities: a pseudo state starts as a copy
    of its node's state, which the upper layers already read as 'a state near the end of the text')."""

    def __init__(self, config: HiddenConfig) -> None:
        super().__init__()
        self.config = config
        size, k = config.hidden_size, config.num_offsets
        self.proj = nn.Linear(size, k * size, bias=True)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(size).repeat(k, 1))
            self.proj.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] real states -> [..., k, H] pseudo states (slot j for position + 1 + j)."""
        out: torch.Tensor = self.proj(hidden.to(self.proj.weight.dtype))
        return out.reshape(*out.shape[:-1], self.config.num_offsets, self.config.hidden_size)

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()},
                  path / WEIGHTS_FILE)

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> TransferMaps:
        path = Path(directory)
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a hidden-transfer directory "
                                    "(scripts/train_hidden.py writes one)")
        maps = cls(HiddenConfig(**json.loads((path / CONFIG_FILE).read_text())))
        maps.load_state_dict({k: v.float() for k, v in load_file(path / WEIGHTS_FILE).items()}, strict=True)
        return maps.to(device, dtype).eval().requires_grad_(False)
