"""Goodness-of-fit helper for the distribution tests (no scipy needed)."""

from __future__ import annotations

import torch


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """p-value of Pearson's chi-square test that `counts` were drawn from `probs`.

    Bins with expected count below `min_expected` are pooled. A count on a zero-probability token
    is an immediate failure (p = 0).
    """
    counts, probs = counts.double(), probs.double() / probs.sum()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    wanted = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = wanted > 0
    observed, wanted = observed[keep], wanted[keep]
    stat = ((observed - wanted) ** 2 / wanted).sum()
    dof = max(int(observed.numel()) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.double), stat / 2))
