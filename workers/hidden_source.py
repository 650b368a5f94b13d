"""Hidden Transfer as the verifier's own draft source (docs/design.md §12.14).

Before a verification: which entries of each row get pseudo slots. An entry is worth its slots only if it
turns out to be the last accepted one (then its guesses become the next tree, under the bonus), so each
entry's chance of being last, pi, comes from the acceptance estimates of the tree being verified, and a
request's `gain` (what a Hidden Transfer tree added over its other sources when it was last offered)
prices it. The batch buys the number of anchors per row that maximises expected committed tokens per
second, slots costing rows of the padded forward (only the layers they pass).

After it: the last accepted entry's k guesses become a small tree under the bonus (`tree_from_guesses`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workers.hidden_transfer import TransferMaps
from workers.tree import ROOT, DraftTree

MAX_ANCHORS = 4  # pseudo-slot groups per row at most
GUESS_TOP_K = 4  # children per level of a guess tree
GAIN_PRIOR = 1.0  # a new request's gain, before any guess tree was offered (optimistic: it gets tried)
GAIN_SMOOTHING = 0.2
EXPLORE_EVERY = 32  # after this many verifications without slots, buy one anchor anyway


@dataclass
class HiddenState:
    """A request's Hidden Transfer bookkeeping (held by its VerifierRequest)."""

    tree: DraftTree | None = None  # guesses under the current root, made by the last verification
    epoch: int = 0  # the committed length `tree` hangs under
    gain: float = GAIN_PRIOR  # EMA of max(0, guess tree's expected tokens - the best other source's)
    num_without: int = 0  # verifications in a row without slots
    anchors: tuple[int, ...] = field(default_factory=tuple)  # of the verification under way

    def take_tree(self, epoch: int) -> DraftTree | None:
        """The guess tree, if it hangs under this epoch's root (used once: the next commit moves the root)."""
        tree, self.tree = self.tree, None
        return tree if tree is not None and self.epoch == epoch else None

    def observe(self, hidden_expected: float, other_expected: float) -> None:
        self.gain += GAIN_SMOOTHING * (max(0.0, hidden_expected - other_expected) - self.gain)


def last_accepted_probs(tree: DraftTree, estimates: torch.Tensor) -> torch.Tensor:
    """[1 + n] chance that the root / node i is the last accepted entry: a_i - sum of its children's a
    (the root's a is 1), from monotone path-acceptance estimates a [n]."""
    accepted = torch.cat([torch.ones(1, dtype=torch.float64), estimates.double().clamp(0, 1)])
    children = torch.zeros_like(accepted)
    children.index_add_(0, tree.parents.to(torch.long) + 1, accepted[1:])  # parent ROOT (-1) -> entry 0
    return (accepted - children).clamp(min=0)


def best_anchors(probs: torch.Tensor, num: int) -> tuple[int, ...]:
    """The `num` entries most likely to be last (ties to the lower entry), in that order."""
    index = torch.arange(probs.numel(), dtype=torch.float64)
    order = torch.argsort(probs.double() * 1e6 - index * 1e-9, descending=True, stable=True)
    return tuple(int(i) for i in order[:num])


def choose_num_anchors(expected_now: Sequence[float], values: Sequence[Sequence[float]], costs_s: Sequence[float],
                       width: int, slot_columns: float) -> int:
    """Anchors per row m (0 .. len(values[b])) maximising (sum_b expected_now[b] + sum_b values[b][:m]) /
    t(width + m * slot_columns); costs_s[W - 1] = t(W), extended linearly past its end. Ties go to fewer."""
    most = max((len(v) for v in values), default=0)
    base = sum(expected_now)
    best_m, best_rate = 0, base / _cost(costs_s, width)
    for m in range(1, most + 1):
        gained = sum(sum(v[:m]) for v in values)
        rate = (base + gained) / _cost(costs_s, width + m * slot_columns)
        if rate > best_rate * (1 + 1e-12):
            best_m, best_rate = m, rate
    return best_m


def _cost(costs_s: Sequence[float], width: float) -> float:
    """t at a fractional width (slots skip the layers below theirs), linear inside and past the table."""
    last = len(costs_s)
    if width <= last:
        low = max(int(width), 1)
        high = min(low + 1, last)
        frac = width - low
        return costs_s[low - 1] + frac * (costs_s[high - 1] - costs_s[low - 1])
    slope = costs_s[-1] - costs_s[-2] if last >= 2 else 0.0
    return costs_s[-1] + max(slope, 0.0) * (width - last)


def tree_from_guesses(logits: torch.Tensor, max_nodes: int, top_k: int = GUESS_TOP_K) -> DraftTree:
    """A tree from k per-offset guesses [k, V] (offset j = depth j + 1 under the bonus): every node at depth
    d has the top_k tokens of offset d as children, and the `max_nodes` best paths by the product of their
    probabilities are kept (ancestor-closed: a child's product never exceeds its parent's)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p_t, top_ids_t = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # [k, top_k]
    top_p, top_ids = top_p_t.tolist(), top_ids_t.tolist()  # plain floats and ints: the loops below are Python
    tokens: list[int] = []
    parents: list[int] = []
    own: list[float] = []
    path: list[float] = []
    frontier = [(ROOT, 1.0)]
    for depth in range(logits.shape[0]):
        candidates = [(p_path * p, parent, t, p)
                      for parent, p_path in frontier for p, t in zip(top_p[depth], top_ids[depth], strict=True)]
        candidates.sort(key=lambda c: -c[0])
        frontier = []
        for p_path, parent, token, p in candidates[: max(max_nodes - len(tokens), 0)]:
            frontier.append((len(tokens), p_path))
            tokens.append(token)
            parents.append(parent)
            own.append(p)
            path.append(p_path)
    keep = sorted(range(len(tokens)), key=lambda i: (-path[i], i))[:max_nodes]
    kept = sorted(keep)  # parents keep lower indices than their children
    new_index = {old: new for new, old in enumerate(kept)}
    return DraftTree.from_lists([tokens[i] for i in kept],
                                [ROOT if parents[i] == ROOT else new_index[parents[i]] for i in kept],
                                [own[i] for i in kept])


class HiddenSource:
    """The maps and the per-batch anchor choice."""

    def __init__(self, maps: TransferMaps, num_layers: int, max_anchors: int = MAX_ANCHORS) -> None:
        self.maps = maps
        self.max_anchors = max_anchors
        self.num_offsets = maps.config.num_offsets
        self.layer_share = (num_layers - maps.config.layer) / num_layers  # slots pass only the upper layers

    @property
    def max_columns(self) -> int:
        return self.max_anchors * self.num_offsets

    def choose(self, states: Sequence[HiddenState], trees: Sequence[DraftTree], estimates: Sequence[torch.Tensor],
               costs_s: Sequence[float] | None, can_speculate: Sequence[bool]) -> list[tuple[int, ...]]:
        """Each row's anchors for this forward (also kept in its state); costs_s None = not measured yet."""
        probs = [last_accepted_probs(t, e) for t, e in zip(trees, estimates, strict=True)]
        values = [(p.sort(descending=True).values[: self.max_anchors] * s.gain).tolist() if ok else []
                  for p, s, ok in zip(probs, states, can_speculate, strict=True)]
        width = 1 + max(t.num_nodes for t in trees)
        if costs_s is None:
            num = self.max_anchors
        else:
            expected_now = [1.0 + float(e.sum()) for e in estimates]
            num = choose_num_anchors(expected_now, values, costs_s, width, self.num_offsets * self.layer_share)
        out = []
        for p, state, ok in zip(probs, states, can_speculate, strict=True):
            take = num if num else int(ok and state.num_without + 1 >= EXPLORE_EVERY)
            state.anchors = best_anchors(p, take) if ok else ()
            state.num_without = 0 if state.anchors else state.num_without + 1
            out.append(state.anchors)
        return out

    def width_of(self, anchors: Sequence[tuple[int, ...]]) -> int:
        """Real-row columns a forward with these anchors costs beyond its tree (slots pass only the upper layers)."""
        return round(max((len(a) for a in anchors), default=0) * self.num_offsets * self.layer_share)

    def tree(self, guesses: torch.Tensor, max_nodes: int) -> DraftTree:
        return tree_from_guesses(guesses, max_nodes)
