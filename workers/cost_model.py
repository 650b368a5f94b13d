"""How much to speculate: the verifier's measured cost t(n) of verifying n nodes, acceptance estimates
per node, and the choice of the node set that maximises expected committed tokens per second.

With a(i) the chance that node i is accepted (its whole path matches the target), one verification
of the n best nodes commits 1 + Σ a(i) tokens on average in t(n) seconds. Estimates never grow down a
path, so the n best nodes by estimate are ancestor-closed and the best set of each size is a prefix
of one order: `choose_num_nodes` only picks the length, and n = 0 (verifier only) is a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from workers.tree import DraftTree


def choose_num_nodes(estimates: Sequence[float] | torch.Tensor, costs_s: Sequence[float]) -> int:
    """argmax over n of (1 + sum of the n first estimates) / costs_s[n]; estimates sorted descending.

    costs_s[n] is t(n) for n = 0 .. len(costs_s) - 1; nodes beyond that are never chosen.
    """
    values = [float(e) for e in estimates][: len(costs_s) - 1]
    best_n, best_rate, expected = 0, 1.0 / costs_s[0], 1.0
    for n, estimate in enumerate(values, start=1):
        expected += estimate
        rate = expected / costs_s[n]
        if rate > best_rate:
            best_n, best_rate = n, rate
    return best_n


def choose_num_expansions(values: Sequence[float] | torch.Tensor, costs_s: Sequence[float]) -> int:
    """The drafter's step size: argmax over E >= 1 of (sum of the E first values) / costs_s[E - 1].

    values: what expanding each candidate leaf is worth (its path probability), best first;
    costs_s[E - 1]: measured seconds of a growth step that expands E leaves.
    """
    best_e, best_rate, total = 1, -1.0, 0.0
    for e, value in enumerate([float(v) for v in values][: len(costs_s)], start=1):
        total += value
        rate = total / costs_s[e - 1]
        if rate > best_rate:
            best_e, best_rate = e, rate
    return best_e


def monotone_estimates(tree: DraftTree, estimates: torch.Tensor) -> torch.Tensor:
    """Each node's estimate capped by its ancestors' (a path is accepted only if its prefix is)."""
    capped: list[float] = []
    for parent, value in zip(tree.parents.tolist(), estimates.tolist(), strict=True):  # parents come first
        capped.append(value if parent < 0 else min(value, capped[parent]))
    return torch.tensor(capped, dtype=estimates.dtype)


def best_first_order(estimates: torch.Tensor) -> torch.Tensor:
    """Nodes by estimate, highest first, ties to the lower index: parents before children when the
    estimates are monotone (a parent's index is lower than its children's)."""
    index = torch.arange(estimates.numel(), dtype=torch.float64)
    return torch.argsort(estimates.double() * 1e6 - index * 1e-9, descending=True, stable=True)


class VerifyCost:
    """t(n, context): seconds per verification of n nodes, from a calibration refined online.

    Cells are (context band, n) with an exponential moving average; an unseen n is interpolated
    between the nearest seen ones of its band (a band with no data borrows the nearest band's).
    Bands are powers of two of the context length.
    """

    def __init__(self, max_nodes: int, smoothing: float = 0.2) -> None:
        self.max_nodes = max_nodes
        self.smoothing = smoothing
        self.cells: dict[int, dict[int, float]] = {}

    @staticmethod
    def band(context: int) -> int:
        return max(int(context), 1).bit_length()

    def observe(self, num_nodes: int, context: int, seconds: float) -> None:
        cells = self.cells.setdefault(self.band(context), {})
        old = cells.get(num_nodes)
        cells[num_nodes] = seconds if old is None else old + self.smoothing * (seconds - old)

    @property
    def is_known(self) -> bool:
        return bool(self.cells)

    def table(self, context: int) -> list[float]:
        """[t(0), ..., t(max_nodes)] in seconds for this context length."""
        if not self.cells:
            return [1.0] * (self.max_nodes + 1)
        band = self.band(context)
        nearest = min(self.cells, key=lambda b: (abs(b - band), -b))
        return interpolate(self.cells[nearest], self.max_nodes)


def interpolate(points: dict[int, float], max_n: int) -> list[float]:
    """Piecewise-linear through the measured points, flat before the first, extended after the last."""
    known = sorted(points.items())
    out: list[float] = []
    for n in range(max_n + 1):
        below = [(k, v) for k, v in known if k <= n]
        above = [(k, v) for k, v in known if k >= n]
        if below and above:
            (k0, v0), (k1, v1) = below[-1], above[0]
            out.append(v0 if k1 == k0 else v0 + (v1 - v0) * (n - k0) / (k1 - k0))
        elif below:  # beyond the last point: the slope of the last two (never decreasing)
            if len(known) >= 2:
                (k0, v0), (k1, v1) = known[-2], known[-1]
                slope = max((v1 - v0) / (k1 - k0), 0.0)
            else:
                slope = 0.0
            out.append(below[-1][1] + slope * (n - below[-1][0]))
        else:
            out.append(above[0][1])
    return out


class CalibratedAcceptance:
    """P(node accepted) from the drafter's path probability, calibrated on the verifier's verdicts.

    Counts per (depth, bin of log path probability); the drafter's own path probability is the prior
    with the weight of `prior_weight` verdicts, so a new deployment trusts the drafter, and a drafter
    whose probabilities lie (a useless one) is corrected after a few dozen verdicts. Counts decay by
    `decay` per verification, so the estimates follow a drafter whose accuracy changes (~1/(1-decay)
    verifications of memory).
    """

    def __init__(self, num_bins: int = 16, max_depth: int = 16, prior_weight: float = 4.0,
                 min_log_prob: float = -12.0, decay: float = 0.995) -> None:
        self.num_bins, self.max_depth, self.prior_weight, self.decay = num_bins, max_depth, prior_weight, decay
        self.min_log_prob = min_log_prob
        self.accepted = torch.zeros(max_depth + 1, num_bins, dtype=torch.float64)
        self.seen = torch.zeros(max_depth + 1, num_bins, dtype=torch.float64)

    def _cells(self, depths: torch.Tensor, path_probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(depth, bin of log path probability) of each node, in numpy (a handful of vector ops on small
        arrays: numpy's calls cost a microsecond where torch's cost several)."""
        log_p = np.clip(np.log(np.maximum(path_probs.numpy().astype(np.float64), 1e-30)), self.min_log_prob, 0.0)
        bins = np.rint((log_p / self.min_log_prob) * (self.num_bins - 1)).astype(np.int64)  # 0 = most likely
        return np.minimum(depths.numpy(), self.max_depth), bins

    def estimate(self, tree: DraftTree) -> torch.Tensor:
        """[N] acceptance estimates, monotone along paths."""
        if tree.num_nodes == 0:
            return torch.zeros(0, dtype=torch.float64)
        return monotone_estimates(tree, self.raw_estimates([tree], tree.depths, tree.path_probs()))

    def raw_estimates(self, trees: Sequence[DraftTree], depths: torch.Tensor, path_probs: torch.Tensor) -> torch.Tensor:
        """Per node of `trees` laid end to end (their `depths` and `path_probs`), before capping along paths:
        a function of each node's cell alone, so every tree of a batch is estimated at once."""
        cell_depths, bins = self._cells(depths, path_probs)
        prior = np.clip(path_probs.numpy().astype(np.float64), 0.0, 1.0)
        return torch.from_numpy((self.accepted.numpy()[cell_depths, bins] + self.prior_weight * prior) / (
            self.seen.numpy()[cell_depths, bins] + self.prior_weight))

    def update(self, tree: DraftTree, accepted: torch.Tensor) -> None:
        """Record a verification's verdicts: accepted[i] is True when node i was on the accepted path."""
        self.update_many([(tree, torch.arange(tree.num_nodes), accepted)])

    def update_many(self, verdicts: Sequence[tuple[DraftTree, torch.Tensor, torch.Tensor]]) -> None:
        """The verdicts of several verifications, in order, as one update: (tree, node indices, accepted).

        Equal to calling `update` on each `tree.select(index)` in turn: the i-th of n is decayed n - 1 - i
        more times, so it is weighted by decay ** (n - 1 - i).
        """
        verdicts = [v for v in verdicts if v[1].numel()]
        if not verdicts:
            return
        self.update_nodes(torch.cat([tree.depths[index] for tree, index, _ in verdicts]),
                          torch.cat([tree.path_probs()[index] for tree, index, _ in verdicts]),
                          torch.cat([ok for _, _, ok in verdicts]), [index.numel() for _, index, _ in verdicts])

    def update_nodes(self, depths: torch.Tensor, path_probs: torch.Tensor, accepted: torch.Tensor,
                     sizes: Sequence[int]) -> None:
        """`update_many` on verdicts already laid end to end: their nodes' depths, path probabilities and
        verdicts, `sizes[i]` nodes of the i-th verification (each > 0), in order."""
        n = len(sizes)
        if n == 0:
            return
        weights = np.repeat(self.decay ** np.arange(n - 1, -1, -1, dtype=np.float64), np.asarray(sizes))
        cell_depths, bins = self._cells(depths, path_probs)
        seen, accepted_counts = self.seen.numpy(), self.accepted.numpy()  # the tensors' memory, updated in place
        seen *= self.decay ** n
        accepted_counts *= self.decay ** n
        np.add.at(seen, (cell_depths, bins), weights)
        np.add.at(accepted_counts, (cell_depths, bins), accepted.numpy().astype(np.float64) * weights)


class LearnedAcceptance:
    """The early-stop decision model of Multi-candidate Speculative Decoding (seed 001) as an estimator:
    a logistic regression over drafter features of each node, trained online (SGD) on the verifier's
    per-node verdicts, which cost nothing to collect.

    Features: bias, log path probability, log own probability, depth, rank among siblings, whether the
    parent is the root. Predicts P(node accepted | parent accepted); a node's estimate is the product
    along its path.
    """

    num_features = 6

    def __init__(self, learning_rate: float = 0.05) -> None:
        self.learning_rate = learning_rate
        self.weights = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # starts as path prob

    def features(self, tree: DraftTree) -> torch.Tensor:
        """[N, F] per-node features."""
        same_parent = tree.parents[:, None] == tree.parents[None, :]
        index = torch.arange(tree.num_nodes)
        beats = (tree.probs[None, :] > tree.probs[:, None]) | (
            (tree.probs[None, :] == tree.probs[:, None]) & (index[None, :] < index[:, None]))
        rank = (same_parent & beats).sum(dim=1).double()
        return torch.stack([torch.ones(tree.num_nodes, dtype=torch.float64),
                            tree.path_probs().double().clamp(min=1e-30).log(),
                            tree.probs.double().clamp(min=1e-30).log(),
                            tree.depths.double(), rank, (tree.parents < 0).double()], dim=1)

    def _conditional(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(feats @ self.weights)

    def estimate(self, tree: DraftTree) -> torch.Tensor:
        if tree.num_nodes == 0:
            return torch.zeros(0, dtype=torch.float64)
        log_cond = self._conditional(self.features(tree)).clamp(min=1e-30).log()
        return monotone_estimates(tree, torch.exp(tree.ancestors().double() @ log_cond))

    def raw_estimates(self, trees: Sequence[DraftTree], depths: torch.Tensor, path_probs: torch.Tensor) -> torch.Tensor:
        """Per node of `trees` laid end to end (features need each tree's siblings: one tree at a time)."""
        parts = [self.estimate(tree) for tree in trees if tree.num_nodes]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def update_many(self, verdicts: Sequence[tuple[DraftTree, torch.Tensor, torch.Tensor]]) -> None:
        """(tree, node indices, accepted) of several verifications, in order: one SGD step each."""
        for tree, index, accepted in verdicts:
            if index.numel():
                self.update(tree.select(index), accepted)

    def update(self, tree: DraftTree, accepted: torch.Tensor) -> None:
        """One SGD step on the nodes whose parent was accepted (the only ones whose verdict says something)."""
        if tree.num_nodes == 0:
            return
        parent_ok = torch.ones(tree.num_nodes, dtype=torch.bool)
        inner = tree.parents >= 0
        parent_ok[inner] = accepted[tree.parents[inner]]
        feats = self.features(tree)[parent_ok]
        if feats.shape[0] == 0:
            return
        labels = accepted[parent_ok].double()
        gradient = feats.T @ (self._conditional(feats) - labels) / feats.shape[0]
        self.weights -= self.learning_rate * gradient


def make_acceptance(kind: str) -> CalibratedAcceptance | LearnedAcceptance:
    if kind == "calibrated":
        return CalibratedAcceptance()
    if kind == "learned":
        return LearnedAcceptance()
    raise ValueError(f"speculation.acceptance must be 'calibrated' or 'learned', got {kind!r}")


def expected_by_width(sorted_estimates: torch.Tensor, max_width: int) -> torch.Tensor:
    """[max_width] expected committed tokens of one request verified at each width W = 1 .. max_width:
    1 (the bonus) + the sum of its W - 1 best estimates (flat once its nodes run out)."""
    values = sorted_estimates.double()[: max_width - 1]
    out = torch.ones(max_width, dtype=torch.float64)
    if values.numel():
        cumulative = torch.cumsum(values, dim=0)
        out[1: values.numel() + 1] += cumulative
        out[values.numel() + 1:] += cumulative[-1]
    return out


def choose_width(expected: torch.Tensor, costs_s: Sequence[float]) -> int:
    """The batch's common width W (root + W - 1 nodes per row) that maximises committed tokens per second.

    expected: [B, max_width] per row, from `expected_by_width`; costs_s[W - 1]: seconds of one batched
    forward of B rows at width W. Every row of a padded forward costs the same whether it fills its
    width or not, so the batch problem reduces to one width: each row then takes its W - 1 best nodes.
    With one row this is `choose_num_nodes`. Ties go to the narrower width.
    """
    total = expected.sum(dim=0)[: len(costs_s)]
    rates = total / torch.tensor(list(costs_s[: total.numel()]), dtype=torch.float64)
    best = torch.nonzero(rates >= rates.max() * (1 - 1e-12)).flatten()
    return int(best[0]) + 1
