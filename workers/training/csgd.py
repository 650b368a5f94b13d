"""Coupled Sequential Glancing Distillation (CSGD) for the Falcon drafter (DESIGN.md §7).

Training layout, the same attention pattern as inference: one sequence of T pairs (pair t at position t,
input fc(cat[f_t, E(x_{t+1})]), predicts f_{t+1}) followed by T·(k-1) placeholders; placeholder j of
block t sits at position t+j and predicts f_{t+1+j}. Pairs are causal; a placeholder sees the pairs
0..t and the placeholders of its own block. Row r therefore predicts the feature at position(r) + 1.

Glancing: pass 1 (no grad) counts each sequence's mistakes (drafter argmax != target argmax over all
valid rows at trained positions); round(glance_ratio × mistakes) placeholder slots, drawn uniformly among
those slots of all blocks, get the TRUE pair input of the position they occupy (slot (t, j) gets pair t+j's input:
true feature f_{t+j} and true token x_{t+j+1}). Pass 2 runs on these inputs with grad; glanced rows
are left out of the loss (their answer was shown, as in GLAT).

Loss = feature_weight · smooth-L1(predicted feature, true feature)
     + distill_weight · soft cross-entropy(drafter logits, target distribution at that position),
averaged over the rows whose position is trained on (all, or the assistant replies of chat data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.drafters.falcon_model import FalconDrafterModel
from workers.tree_mask import additive_mask


@dataclass(frozen=True)
class CSGDConfig:
    feature_weight: float = 1.0  # smooth-L1 feature regression
    distill_weight: float = 1.0  # soft cross-entropy to the target's next-token distribution
    is_glancing: bool = True  # False = the --no-glance ablation (one pass, no replaced inputs)
    glance_ratio: float = 0.5  # placeholder slots replaced per counted mistake (k=2: glanced share = error rate)
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        for key in ("feature_weight", "distill_weight", "glance_ratio"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        if not self.smooth_l1_beta > 0:
            raise ValueError(f"smooth_l1_beta must be > 0, got {self.smooth_l1_beta!r}")


@dataclass(frozen=True)
class Layout:
    """The training rows of T pairs and block size k (Q = T·k rows)."""

    visible: torch.Tensor  # [Q, Q] bool
    positions: torch.Tensor  # [Q] position ids; row r predicts the feature at positions[r] + 1
    depths: torch.Tensor  # [Q] 1 for pairs, j + 1 for placeholder j (the draft depth it serves)
    num_pairs: int

    @property
    def valid(self) -> torch.Tensor:
        """[Q] rows whose target feature exists (position + 1 <= T)."""
        return self.positions < self.num_pairs

    @property
    def is_placeholder(self) -> torch.Tensor:
        return torch.arange(self.positions.numel()) >= self.num_pairs


def build_layout(num_pairs: int, block_size: int) -> Layout:
    """Rows 0..T-1 are pairs; row T + t·(k-1) + j-1 is placeholder j of block t."""
    t, m = num_pairs, block_size - 1
    pair_pos = torch.arange(t)
    anchor = pair_pos.repeat_interleave(m)  # [T·m] block of each placeholder
    offset = torch.arange(1, block_size).repeat(t)  # [T·m] j
    q = t * block_size
    visible = torch.zeros(q, q, dtype=torch.bool)
    visible[:t, :t] = torch.ones(t, t, dtype=torch.bool).tril()
    visible[t:, :t] = pair_pos[None, :] <= anchor[:, None]
    visible[t:, t:] = anchor[:, None] == anchor[None, :]
    positions = torch.cat([pair_pos, anchor + offset])
    depths = torch.cat([torch.ones(t, dtype=torch.long), offset + 1])
    return Layout(visible, positions, depths, t)


def pair_inputs(model: FalconDrafterModel, features: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """[B, T, H] true pair inputs from features [B, L, H] and tokens [B, L] (T = L - 1)."""
    return model.fuse(features[:, :-1], token_ids[:, 1:])


def layout_inputs(model: FalconDrafterModel, pairs: torch.Tensor, layout: Layout,
                  glanced: torch.Tensor | None) -> torch.Tensor:
    """[B, Q, H]: pair inputs, then placeholders; glanced placeholder rows ([B, T·(k-1)] bool) take the
    true pair input of the position they occupy."""
    batch, num_pairs = pairs.shape[0], layout.num_pairs
    num_slots = layout.positions.numel() - num_pairs
    slots = model.placeholders(num_slots).expand(batch, -1, -1)  # [B, S, H]
    if glanced is not None:
        source = layout.positions[num_pairs:].clamp(max=num_pairs - 1).to(pairs.device)  # [S]
        slots = torch.where(glanced[..., None], pairs[:, source], slots)
    return torch.cat([pairs, slots], dim=1)


def run_layout(model: FalconDrafterModel, inputs: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The drafter over the training rows: [B, Q, H] inputs -> [B, Q, H] predicted features."""
    mask = additive_mask(layout.visible, inputs.dtype).to(inputs.device)  # [1, 1, Q, Q]
    positions = layout.positions[None].expand(inputs.shape[0], -1).to(inputs.device)
    out: torch.Tensor = model(inputs, mask, positions, None)
    return out


def count_mistakes(pred_ids: torch.Tensor, target_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B] rows per sequence where the drafter's argmax ([B, Q]) differs from the target's, among the rows
    `valid` marks ([Q] or [B, Q])."""
    return ((pred_ids != target_ids) & valid.to(pred_ids.device)).sum(dim=1)


def choose_glanced(num_glances: torch.Tensor, layout: Layout, generator: torch.Generator,
                   eligible: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T·(k-1)] bool: exactly min(num_glances[b], eligible slots) eligible placeholder slots per sequence,
    uniformly at random; eligible = valid, and within `eligible` ([B, S], e.g. trained positions) if given."""
    slot_valid = layout.valid[layout.num_pairs:]  # [S]
    batch, num_slots = num_glances.numel(), slot_valid.numel()
    allowed = slot_valid[None, :].expand(batch, -1)
    if eligible is not None:
        allowed = allowed & eligible.cpu()
    scores = torch.rand(batch, num_slots, generator=generator)
    scores[~allowed] = 2.0  # ineligible slots sort last
    order = scores.argsort(dim=1)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(num_slots).expand(batch, -1).contiguous())
    limit = torch.minimum(num_glances.cpu(), allowed.sum(dim=1))
    return ranks < limit[:, None]


@dataclass(frozen=True)
class Targets:
    """What the frozen target says about one batch; row r of the layout uses index positions[r] + 1."""

    features: torch.Tensor  # [B, L, H] last-layer features (final-norm output)
    probs: torch.Tensor  # [B, L, V] next-token distributions at each position
    argmax: torch.Tensor  # [B, L] the target's greedy token after each position
    weights: torch.Tensor | None = None  # [B, L] bool: positions trained on (None = all)

    @staticmethod
    def of(target_model: Any, token_ids: torch.Tensor, weights: torch.Tensor | None = None) -> Targets:
        """Features (fp32) and distributions of a Llama / Qwen2-family HF causal LM in any dtype, no grad."""
        with torch.no_grad():
            features = target_model.model(input_ids=token_ids).last_hidden_state  # [B, L, H]
            logits = target_model.lm_head(features).float()  # [B, L, V]
        return Targets(features.float(), torch.softmax(logits, dim=-1), logits.argmax(dim=-1),
                       None if weights is None else weights.to(token_ids.device))

    def per_row(self, layout: Layout) -> Targets:
        """Align to the layout's rows: [B, Q, ...] (invalid rows clamped; mask them with layout.valid)."""
        index = (layout.positions + 1).clamp(max=self.features.shape[1] - 1).to(self.features.device)
        weights = None if self.weights is None else self.weights[:, index]
        return Targets(self.features[:, index], self.probs[:, index], self.argmax[:, index], weights)

    def row_weights(self, layout: Layout) -> torch.Tensor:
        """[B, Q] bool: rows that count (valid, and at a trained position); call on `per_row`'s result."""
        valid = layout.valid.to(self.argmax.device)[None, :].expand_as(self.argmax)
        return valid if self.weights is None else valid & self.weights


@dataclass(frozen=True)
class CSGDOutput:
    loss: torch.Tensor
    feature_loss: float
    distill_loss: float
    num_glanced: int
    accuracy_per_depth: list[float]  # drafter argmax == target argmax, by depth, on the first pass


def csgd_loss(model: FalconDrafterModel, token_ids: torch.Tensor, targets: Targets, layout: Layout,
              config: CSGDConfig, generator: torch.Generator) -> CSGDOutput:
    """One CSGD step's loss on windows [B, L] (L = T + 1); `targets` from `Targets.of(target, token_ids)`."""
    rows = targets.per_row(layout)
    counted = rows.row_weights(layout)  # [B, Q]
    pairs = pair_inputs(model, targets.features, token_ids)  # [B, T, H]
    glanced = None
    if config.is_glancing:
        with torch.no_grad():
            first = model.logits(run_layout(model, layout_inputs(model, pairs, layout, None), layout))
            first_ids = first.argmax(dim=-1)  # [B, Q]
        mistakes = count_mistakes(first_ids, rows.argmax, counted)
        num = torch.round(mistakes.float() * config.glance_ratio).long()
        glanced = choose_glanced(num, layout, generator, counted[:, layout.num_pairs:]).to(token_ids.device)
    hidden = run_layout(model, layout_inputs(model, pairs, layout, glanced), layout)  # [B, Q, H]
    logits = model.logits(hidden).float()  # [B, Q, V]
    if not config.is_glancing:
        first_ids = logits.detach().argmax(dim=-1)
    weight = counted.clone()  # [B, Q]
    if glanced is not None:
        weight[:, layout.num_pairs:] &= ~glanced
    feature_loss, distill_loss = _losses(hidden, logits, rows, weight, config)
    loss = config.feature_weight * feature_loss + config.distill_weight * distill_loss
    return CSGDOutput(loss, float(feature_loss.detach()), float(distill_loss.detach()),
                      int(glanced.sum()) if glanced is not None else 0,
                      accuracy_per_depth(first_ids, rows.argmax, layout, counted))


def _losses(hidden: torch.Tensor, logits: torch.Tensor, rows: Targets, weight: torch.Tensor,
            config: CSGDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean smooth-L1 per feature element and mean soft cross-entropy per row, over rows with weight."""
    w = weight.float()  # [B, Q]
    count = w.sum().clamp(min=1.0)
    l1 = nn.functional.smooth_l1_loss(hidden.float(), rows.features, reduction="none", beta=config.smooth_l1_beta)
    feature = (l1.mean(dim=-1) * w).sum() / count
    soft_ce = -(rows.probs * torch.log_softmax(logits, dim=-1)).sum(dim=-1)  # [B, Q]
    distill = (soft_ce * w).sum() / count
    return feature, distill


def accuracy_per_depth(pred_ids: torch.Tensor, target_ids: torch.Tensor, layout: Layout,
                       counted: torch.Tensor | None = None) -> list[float]:
    """Share of counted rows ([B, Q]; default: the valid ones) of each depth whose drafter argmax equals the
    target's argmax (nan at a depth without counted rows)."""
    hits = (pred_ids == target_ids).float()  # [B, Q]
    if counted is None:
        counted = layout.valid[None, :].expand_as(hits)
    weight = counted.float().to(hits.device)
    depths = layout.depths.to(hits.device)
    out = []
    for depth in range(1, int(layout.depths.max()) + 1):  # k depths
        w = weight * (depths == depth)[None, :]
        out.append(float((hits * w).sum() / w.sum()) if bool(w.any()) else float("nan"))
    return out
