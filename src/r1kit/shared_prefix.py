"""Training forward that computes a prompt prefix shared by the whole batch once.

RL and SFT batches often start with the same tokens (the R1-Zero template is ~120 tokens before the question). The
prefix runs at batch 1; every row's continuation then attends to the prefix's keys/values (or MLA latents), expanded
without a copy. Autograd sums the gradients of all rows through the expansion, so logits and gradients equal those
of `model(ids)`; only the floating-point summation order differs. The model needs no change: this goes through
the same cache hooks the engine uses.
"""
from __future__ import annotations

import torch

MIN_PREFIX = 16  # shorter shared prefixes are not worth a second forward


class _PrefixKV:
    """Records the prefix's per-layer cache entries, then prepends them (expanded to the batch) to each row's."""

    def __init__(self):
        self.saved: dict[int, tuple] = {}
        self.recording = True

    @property
    def recomputable(self) -> bool:
        # the rows' pass only reads the saved prefix, so activation checkpointing may re-run it; the prefix's own
        # pass writes `saved` and runs once, at batch 1
        return not self.recording

    def _join(self, layer: int, new: tuple, dim: int) -> tuple:
        if self.recording:
            self.saved[layer] = new
            return new
        B = new[0].shape[0]
        return tuple(torch.cat([p.expand(B, *p.shape[1:]), x], dim=dim) for p, x in zip(self.saved[layer], new))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):  # (B, Hkv, T, hd): time is dim 2
        return self._join(layer, (k, v), 2)

    def update_latent(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor):  # (B, T, r): time is dim 1
        return self._join(layer, (c_kv, k_pe), 1)


def common_prefix_len(ids: torch.Tensor) -> int:
    """Length of the longest prefix that every row of ids (B, T) shares."""
    same = (ids == ids[:1]).all(dim=0)  # (T,)
    return int(same.long().cumprod(0).sum())


def forward(model, ids: torch.Tensor, min_prefix: int = MIN_PREFIX, start: int = 0, hidden: bool = False) -> torch.Tensor:
    """Logits (B, T - start, V) equal to `model(ids)[:, start:]`, computing the batch's shared prefix once when it is
    long enough. `start` skips positions whose logits are not needed (RL: the prompt's). hidden=True returns the
    final hidden states (B, T - start, D) instead (see Transformer.forward)."""
    B, T = ids.shape
    P = min(common_prefix_len(ids), T - 1)
    if B == 1 or P < min_prefix:
        return model(ids, logits_from=start, hidden=hidden)
    kv = _PrefixKV()
    head = model(ids[:1, :P], cache=kv, logits_from=min(start, P), hidden=hidden)  # (1, P - start, *), causal
    kv.recording = False
    pos = torch.arange(P, T, device=ids.device)
    # row token i (absolute position P+i) sees the whole prefix and its own tokens up to i
    mask = torch.arange(T, device=ids.device)[None, :] <= pos[:, None]  # (T-P, T) bool
    tail = model(ids[:, P:], positions=pos, cache=kv, attn_mask=mask, logits_from=max(0, start - P), hidden=hidden)
    if start >= P:
        return tail
    return torch.cat([head.expand(B, -1, -1), tail], dim=1)
