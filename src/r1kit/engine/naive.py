"""Full-recompute greedy decoding: the test oracle the engine is checked against, token for token.

It re-runs the whole sequence each step (no KV cache), so it is slow and obviously right.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def greedy(model, ids: torch.Tensor, max_new_tokens: int, stop_ids: set[int] = frozenset()) -> list[int]:
    """Append argmax tokens to `ids` (1, T); returns the new token ids, stopping after a stop id."""
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(model(ids, last_only=True)[0, -1].argmax())
        out.append(nxt)
        if nxt in stop_ids:
            break
        ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
    return out
