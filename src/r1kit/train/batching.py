"""Token-budget micro-batches: split a batch's rows so each forward/backward holds a bounded number of tokens.

The rows keep their order (a GRPO group's samples stay together, so their shared prompt runs once per
micro-batch), and a row longer than the budget forms a micro-batch of its own. `prefix_micro_batches` first
groups an SFT batch's rows by their opening tokens, so rows that share a long prompt (a system prompt, a
template) meet in one micro-batch and shared_prefix runs that prompt once.
"""
from __future__ import annotations

import torch


def row_lengths(mask: torch.Tensor) -> torch.Tensor:
    """[N, T-1] target mask -> [N] tokens each row needs (its last scored target + 1, plus the first input)."""
    N, L = mask.shape
    m = mask.bool()
    last = L - 1 - m.flip(-1).float().argmax(-1)  # index of the last set position
    return torch.where(m.any(-1), last + 2, torch.ones(N, dtype=torch.long))


def micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Contiguous groups of row indices whose padded size (rows x longest row) stays within `budget` tokens;
    budget <= 0 puts every row in one group."""
    if budget <= 0:
        return [list(range(len(lengths)))] if lengths else []
    out, cur, longest = [], [], 0
    for i, n in enumerate(lengths):
        if cur and (len(cur) + 1) * max(longest, n) > budget:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def prefix_micro_batches(ids: torch.Tensor, lengths: list[int], budget: int,
                         min_prefix: int | None = None) -> list[list[int]]:
    """micro_batches over the rows regrouped: rows that open with the same `min_prefix` tokens form a group (in
    order), and the rest keep their order after them. Without such a group the micro-batches are micro_batches'.
    The loss is a sum over rows, so regrouping changes only the order of the sum."""
    from r1kit.shared_prefix import MIN_PREFIX

    min_prefix = min_prefix or MIN_PREFIX  # the length from which shared_prefix runs a prefix once
    groups: dict[tuple, list[int]] = {}
    for i, n in enumerate(lengths):
        key = tuple(ids[i, :min_prefix].tolist()) if n >= min_prefix else ("row", i)
        groups.setdefault(key, []).append(i)
    shared = [g for g in groups.values() if len(g) > 1]
    if not shared:
        return micro_batches(lengths, budget)
    rest = sorted(i for g in groups.values() if len(g) == 1 for i in g)
    return [[g[j] for j in part] for g in shared + ([rest] if rest else [])
            for part in micro_batches([lengths[i] for i in g], budget)]
