"""Mixed precision: on CUDA, bf16 compute with fp32 master weights and optimiser state (the weights stay fp32;
autocast runs the matmuls in bf16). The CPU stays fp32: bf16 matmuls are far slower than fp32 on most CPUs."""
from __future__ import annotations

import contextlib

import torch


def autocast(model):
    """bf16 autocast for an fp32 model on CUDA; no change otherwise (CPU, or weights already bf16)."""
    p = next(model.parameters())
    if p.device.type == "cuda" and p.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
