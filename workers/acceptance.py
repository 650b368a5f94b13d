"""Acceptance math (pure functions): which draft nodes the target keeps, and the bonus token.

Tandem's draft trees are deterministic (top-k / best-first), so every candidate's proposal is a
point mass q = δ(x). Multi-candidate recursive rejection sampling with point masses accepts
sibling x_i with probability p'(x_i) and otherwise zeroes x_i in p and renormalises; the sibling
loop then picks x_i exactly with probability p(x_i) and, if every sibling is rejected, draws the
bonus from p restricted to the other tokens. That is the law of a single draw y ~ p: follow the
child whose token is y, else y is the bonus. `accept_path` does that for every node at once from
one target choice per node (argmax when greedy, a seeded draw when sampling). `recursive_rejection`
is the general per-node rule with a drafter distribution q, for drafters that sample their
children; tests check both against direct sampling.
"""

from __future__ import annotations

import torch

from workers.tree import DraftTree


def accept_path(tree: DraftTree, target_tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Longest root-to-node path the target agrees with, and the bonus token after it.

    target_tokens: [N+1] the target's choice at the root (row 0) and after each node (row i+1).
    Returns (node indices of the accepted path in depth order, bonus token id).
    """
    if tree.num_nodes == 0:
        return torch.zeros(0, dtype=torch.long), int(target_tokens[0])
    target_tokens = target_tokens.to(tree.token_ids.device)
    is_match = tree.token_ids == target_tokens[tree.parents + 1]  # [N]
    ancestors = tree.ancestors()  # [N, N]
    on_path = ~(ancestors & ~is_match[None, :]).any(dim=1)  # node and all its ancestors match
    if not bool(on_path.any()):
        return torch.zeros(0, dtype=torch.long), int(target_tokens[0])
    depth_score = torch.where(on_path, tree.depths, -1)
    deepest = int(torch.argmax(depth_score))  # first maximum: lowest index among equal depths
    path = torch.nonzero(ancestors[deepest]).flatten()  # topological order == depth order
    return path, int(target_tokens[deepest + 1])


def recursive_rejection(p: torch.Tensor, candidates: torch.Tensor, q: torch.Tensor | None,
                        generator: torch.Generator) -> tuple[int, int]:
    """One node of multi-candidate recursive rejection sampling (DESIGN.md §6).

    p: [V] target distribution; candidates: [m] sibling tokens in the order the drafter drew them
    (without replacement from q); q: [V] drafter distribution, or None for deterministic candidates
    (q = δ(candidate)). Returns (index of the accepted candidate or -1, token emitted here).
    """
    p = p.double().clone()
    q_left = None if q is None else q.double().clone()
    for i, token in enumerate(candidates.tolist()):  # siblings are few; order matters
        proposal = torch.zeros_like(p)
        if q_left is None:
            proposal[token] = 1.0
        else:
            proposal = q_left / q_left.sum()
        ratio = float(p[token] / proposal[token]) if proposal[token] > 0 else 0.0
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < min(1.0, ratio):
            return i, token
        residual = (p - proposal).clamp(min=0)
        p = residual / residual.sum() if residual.sum() > 0 else p
        if q_left is not None:
            q_left[token] = 0.0
    bonus = int(torch.multinomial(p.float(), 1, generator=generator))
    return -1, bonus


def accept_with_candidates(tree: DraftTree, target_tokens: torch.Tensor,
                           candidates: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """MCSD's target-initialised candidates (opt-in, lossy): where the exact path stops, any child whose
    token is among the target's top-W there is a candidate root, and the one whose branch the target
    accepts longest is committed instead of the target's own choice.

    target_tokens: [N+1] as for `accept_path`; candidates: [N+1, W] the target's W most likely tokens at
    the root (row 0) and after each node. A candidate wins only when at least one node below it is
    accepted (otherwise it would commit no more than the exact bonus). Returns (path, bonus, whether a
    candidate other than the target's choice was committed). The choice is made after seeing the
    continuations, so the output is not the target's distribution: see docs/design.md.
    """
    path, bonus = accept_path(tree, target_tokens)
    if tree.num_nodes == 0:
        return path, bonus, False
    last = int(path[-1]) if path.numel() else -1
    allowed = candidates[last + 1].to(tree.token_ids.device)
    roots = torch.nonzero((tree.parents == last) & torch.isin(tree.token_ids, allowed)).flatten()
    if roots.numel() == 0:
        return path, bonus, False
    is_match = tree.token_ids == target_tokens.to(tree.token_ids.device)[tree.parents + 1]  # [N]
    ancestors = tree.ancestors()
    best, best_gain = -1, 0
    for root in roots.tolist():  # a handful of siblings
        between = ancestors & ~ancestors[root][None, :]  # [N, N]: path nodes strictly below `root`
        ok = ancestors[:, root] & ~(between & ~is_match[None, :]).any(dim=1)  # reachable by accepted nodes
        gain = int((tree.depths[ok] - tree.depths[root]).max())  # accepted nodes below the candidate
        if gain > best_gain:
            deepest = int(torch.nonzero(ok & (tree.depths == tree.depths[root] + gain)).flatten()[0])
            best, best_gain = deepest, gain
    if best < 0:
        return path, bonus, False
    return torch.nonzero(ancestors[best]).flatten(), int(target_tokens[best + 1]), True
