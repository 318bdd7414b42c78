"""CPU fp32 inference: oneDNN-prepacked `nn.Linear` weights, applied from outside the model.

Decode on CPU is a stack of skinny matmuls (batch rows x weight). PyTorch's default path multiplies by the weight in
its training layout; oneDNN's blocked ("prepacked") layout runs these shapes 1.3-2x faster on AVX-512 machines (the
49152 x 576 head of SmolLM2 at 16 rows: 24 ms -> 12 ms). This is what inductor's CPU `freezing` does, without the
compile. Projections that read the same input are fused into one packed matmul (q/k/v of `Attention.qkv`,
gate/up of `MLP`): fewer, larger matmuls stream the weights faster (SmolLM2's 30 layers: -1.3 ms per decode step).

The model is never modified for good (it stays the trainable model the RL loop updates): `PackedLinears.active()`
swaps the forwards only for the duration of an engine step, and a packed weight is rebuilt whenever the version
counter of a part moves (an optimiser step updates weights in place), so packed copies are never stale. Cost: a
blocked copy of the Linear weights, an (in, out) copy of the wide ones once a batch-1 step has used them, and the
concatenated weights of fused groups (kept to rebuild either layout).
"""
from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks of up to 32 MB in the process instead of unmapping them.

    A decode step allocates and frees the same few MB every step (SmolLM2 at 16 rows: 3 MB logits and their
    softmax). With glibc's defaults those blocks go back to the kernel and come back as fresh zeroed pages, and the
    page faults cost more than the arithmetic: sampling 16 x 49k took 2.8 ms instead of 0.8. This is what
    jemalloc/tcmalloc preloading (Intel's advice for PyTorch on CPU) buys, without a preload. Process-wide: the
    process may hold up to 512 MB of freed memory. Returns False where it does not apply (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):
        return False


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinears:
    def __init__(self, model: nn.Module, batch_hint: int = 16):
        from r1kit.model.model import MLP, Attention

        self.batch_hint = batch_hint  # rows the blocked layout is tuned for; any row count works
        self.packed: dict[tuple[nn.Linear, ...], list] = {}  # parts -> [key, weight, bias, blocked, transposed]
        self.patches: dict[tuple[nn.Module, str], object] = {}  # (module, method name) -> replacement
        fused: set[nn.Linear] = set()
        for m in model.modules():
            if isinstance(m, Attention):
                self.patches[m, "qkv"] = self._split(self._linear(m.q_proj, m.k_proj, m.v_proj))
                fused |= {m.q_proj, m.k_proj, m.v_proj}
            elif isinstance(m, MLP):
                self.patches[m, "forward"] = self._mlp(m, self._linear(m.gate_proj, m.up_proj))
                fused |= {m.gate_proj, m.up_proj}
        for m in model.modules():
            if isinstance(m, nn.Linear) and m not in fused:
                self.patches[m, "forward"] = self._linear(m)

    def _linear(self, *parts: nn.Linear):
        """x -> x @ cat(weights).T + cat(biases), on packed copies rebuilt when any part changes."""
        out_features, in_features = sum(p.out_features for p in parts), parts[0].in_features
        # one row (batch-1 decode) through a weight wider than tall: a plain (in, out) copy streams ~1.5-1.7x faster
        # than oneDNN's blocked layout (SmolLM2's head 15 -> 26 GB/s); at 2+ rows the blocked layout wins
        gemv = out_features >= in_features

        def forward(x: torch.Tensor) -> torch.Tensor:
            key = tuple((t._version, t.data_ptr()) for p in parts for t in (p.weight, p.bias) if t is not None)
            entry = self.packed.get(parts)
            if entry is None or entry[0] != key:
                w = torch.cat([p.weight.detach() for p in parts]) if len(parts) > 1 else parts[0].weight.detach()
                b = None
                if parts[0].bias is not None:
                    b = torch.cat([p.bias.detach() for p in parts]) if len(parts) > 1 else parts[0].bias.detach()
                entry = self.packed[parts] = [key, w, b, None, None]  # key, weight, bias, blocked, (in, out)
            if gemv and x.numel() == in_features:
                if entry[4] is None:
                    entry[4] = entry[1].t().contiguous()
                y = x.reshape(1, in_features) @ entry[4]
                return (y if entry[2] is None else y + entry[2]).view(*x.shape[:-1], out_features)
            if entry[3] is None:
                entry[3] = torch.ops.mkldnn._reorder_linear_weight(entry[1], self.batch_hint)
            return torch.ops.mkldnn._linear_pointwise(x, entry[3], entry[2], "none", [], "")
        forward.sizes = [p.out_features for p in parts]
        return forward

    @staticmethod
    def _split(fused):
        return lambda x: fused(x).split(fused.sizes, dim=-1)

    @staticmethod
    def _mlp(m: nn.Module, gate_up):
        def forward(x: torch.Tensor) -> torch.Tensor:
            g, u = gate_up(x).split(gate_up.sizes, dim=-1)
            return m.down_proj(F.silu(g) * u)
        return forward

    @contextmanager
    def active(self):
        for (m, name), f in self.patches.items():
            setattr(m, name, f)  # an instance attribute shadows the class's method
        try:
            yield
        finally:
            for m, name in self.patches:
                delattr(m, name)
