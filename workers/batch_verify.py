"""Verification of many requests in one forward on the slot cache: per-row choice, acceptance, compaction.

The pure per-row math is the single-request path's (workers/acceptance.py, workers/sampling.py); only
the forward and the compaction are shared by the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from protocol.params import SamplingParams
from workers.acceptance import accept_path, accept_with_candidates
from workers.batch_mask import Row
from workers.hidden_transfer import TransferMaps
from workers.sampling import choose_tokens
from workers.slot_cache import SlotCache
from workers.target import TargetVerifier
from workers.tree import DraftTree


@dataclass(frozen=True)
class VerifyJob:
    """One request's part of a batched verification."""

    slot: int
    start: int  # cached positions: C - 1 (the root is written at `start`)
    root: int  # x[C-1]
    tree: DraftTree
    params: SamplingParams
    num_candidates: int = 0  # speculation.target_candidates (lossy; 0 = exact)
    anchors: tuple[int, ...] = ()  # Hidden Transfer: entries (0 = root, 1 + i = node i) that get pseudo slots


@dataclass(frozen=True)
class Verdict:
    path: torch.Tensor  # accepted node indices in depth order
    bonus: int
    hidden: torch.Tensor  # [1 + n, H] last-layer states of root + nodes
    logits: torch.Tensor  # [1 + n, V] float32: row 0 after the root, row 1 + i after node i
    off_top: bool = False  # a target candidate other than the target's choice was committed
    guesses: torch.Tensor | None = None  # [k, V] float32: the last accepted entry's slots, when it was an anchor


def verify_batch(target: TargetVerifier, cache: SlotCache, jobs: Sequence[VerifyJob],
                 maps: TransferMaps | None = None) -> list[Verdict]:
    """Verify every job's tree in one forward and keep each row's root + accepted path in its slot.

    With `maps` and anchors, the same forward runs the anchors' pseudo slots; the LM head then runs only on
    the slots of rows whose last accepted entry was an anchor (the guesses for the tokens after its bonus).
    Rows run in slot order (verdicts come back in the jobs' order): slots that form a run are attended as
    a view of the cache instead of a gather of every row's keys and values.
    """
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].slot)
    by_job = dict(zip(order, _verify_sorted(target, cache, [jobs[i] for i in order], maps), strict=True))
    return [by_job[i] for i in range(len(jobs))]


@torch.inference_mode()
def _verify_sorted(target: TargetVerifier, cache: SlotCache, jobs: Sequence[VerifyJob],
                   maps: TransferMaps | None) -> list[Verdict]:
    rows = [Row.tree(job.root, job.tree) for job in jobs]
    slots, starts = [job.slot for job in jobs], [job.start for job in jobs]
    pseudo = None
    if maps is not None and any(job.anchors for job in jobs):
        hidden, pseudo = target.forward_rows_pseudo(cache, slots, starts, rows, maps, [job.anchors for job in jobs])
    else:
        hidden = target.forward_rows(cache, slots, starts, rows)  # [B, W, H]
    widths = [row.width for row in rows]
    flat = torch.cat([hidden[b, :w] for b, w in enumerate(widths)])  # [sum n, H]: padding gets no LM head
    logits = target.logits(flat)
    greedy = all(job.params.is_greedy for job in jobs)
    chosen_all = torch.argmax(logits, dim=-1).cpu() if greedy else None
    verdicts, keep = [], []
    offset = 0
    for job, width in zip(jobs, widths, strict=True):
        row_logits = logits[offset: offset + width]
        if chosen_all is not None:
            chosen = chosen_all[offset: offset + width]
        else:  # the token each row predicts sits at position C + depth
            positions = job.start + 1 + torch.cat([torch.zeros(1, dtype=torch.long), job.tree.depths])
            chosen = choose_tokens(row_logits, job.params, positions).cpu()
        off_top = False
        if job.num_candidates > 1 and job.tree.num_nodes:
            candidates = row_logits.topk(min(job.num_candidates, row_logits.shape[-1]), dim=-1).indices.cpu()
            path, bonus, off_top = accept_with_candidates(job.tree, chosen, candidates)
        else:
            path, bonus = accept_path(job.tree, chosen)
        verdicts.append(Verdict(path, bonus, flat[offset: offset + width], row_logits, off_top))
        keep.append([0, *(1 + path).tolist()])
        offset += width
    cache.compact(slots, starts, keep)
    if pseudo is not None:
        assert maps is not None
        verdicts = _with_guesses(target, verdicts, jobs, pseudo, maps.config.num_offsets)
    return verdicts


def _with_guesses(target: TargetVerifier, verdicts: list[Verdict], jobs: Sequence[VerifyJob], pseudo: torch.Tensor,
                  num_offsets: int) -> list[Verdict]:
    """Attach the guesses of every row whose last accepted entry has slots (one LM-head call for all)."""
    picks = []  # (row, first slot column)
    for b, (job, verdict) in enumerate(zip(jobs, verdicts, strict=True)):
        last = int(verdict.path[-1]) + 1 if verdict.path.numel() else 0
        if last in job.anchors:
            picks.append((b, job.anchors.index(last) * num_offsets))
    if not picks:
        return verdicts
    states = torch.stack([pseudo[b, column: column + num_offsets] for b, column in picks])  # [R, k, H]
    logits = target.logits(states)
    out = list(verdicts)
    for (b, _), guesses in zip(picks, logits, strict=True):
        out[b] = replace(out[b], guesses=guesses)
    return out


@torch.inference_mode()
def prefill_guessing(target: TargetVerifier, cache: SlotCache, slots: Sequence[int], starts: Sequence[int],
                     chunks: Sequence[Sequence[int]], maps: TransferMaps,
                     anchors: Sequence[Sequence[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """`prefill_batch` in which a row with an anchor (its prompt's last entry) also runs that entry's Hidden
    Transfer slots: returns the chunks' states and per row the guesses [k, V] for the k tokens after the
    first generated one (None without an anchor). The slots' keys and values stay beyond the kept prefix."""
    hidden, pseudo = target.forward_rows_pseudo(cache, slots, starts, [Row.chunk(c) for c in chunks], maps, anchors)
    k = maps.config.num_offsets
    picks = [b for b, chosen in enumerate(anchors) if chosen]
    guesses: list[torch.Tensor | None] = [None] * len(chunks)
    if picks:
        for b, logits in zip(picks, target.logits(torch.stack([pseudo[b, :k] for b in picks])), strict=True):
            guesses[b] = logits
    return _cached_chunks(cache, slots, starts, chunks, hidden), guesses


@torch.inference_mode()
def prefill_batch(target: TargetVerifier, cache: SlotCache, slots: Sequence[int], starts: Sequence[int],
                  chunks: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Cache one prompt chunk per slot (written after `starts`); returns each chunk's hidden states [n, H]."""
    hidden = target.forward_rows(cache, slots, starts, [Row.chunk(chunk) for chunk in chunks])
    return _cached_chunks(cache, slots, starts, chunks, hidden)


def _cached_chunks(cache: SlotCache, slots: Sequence[int], starts: Sequence[int], chunks: Sequence[Sequence[int]],
                   hidden: torch.Tensor) -> list[torch.Tensor]:
    """Each slot keeps its chunk (the lengths move past it); returns each chunk's states [n, H]."""
    for slot, start, chunk in zip(slots, starts, chunks, strict=True):
        cache.set_length(slot, start + len(chunk))
    return [hidden[b, : len(chunk)] for b, chunk in enumerate(chunks)]
