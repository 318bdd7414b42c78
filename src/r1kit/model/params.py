"""Exact parameter counts from a config alone, so `r1kit params deepseek-v3-671b` needs no 671B of memory.

Tests check these formulas against `sum(p.numel())` of instantiated tiny models.
"""
from __future__ import annotations

from dataclasses import dataclass

from r1kit.model.config import ModelConfig


@dataclass
class ParamCount:
    total: int  # main model (MTP excluded, as DeepSeek reports it)
    activated: int  # per token, embedding included
    embedding: int  # the input embedding (a lookup, no FLOPs)
    mtp: int  # unique MTP parameters (embedding and head are shared, not counted)
    kv_cache_bytes_per_token: int  # bf16, all layers


def _attention(c: ModelConfig) -> int:
    if c.mla:
        qk = c.qk_nope_head_dim + c.qk_rope_head_dim
        q = c.dim * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * c.n_heads * qk if c.q_lora_rank \
            else c.dim * c.n_heads * qk
        kv = c.dim * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank \
            + c.kv_lora_rank * c.n_heads * (c.qk_nope_head_dim + c.v_head_dim)
        return q + kv + c.n_heads * c.v_head_dim * c.dim
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    bias = (q + 2 * kv) if c.qkv_bias else 0
    return c.dim * q + 2 * c.dim * kv + bias + q * c.dim


def _moe(c: ModelConfig, experts: int) -> int:
    """A MoE layer with `experts` routed experts counted (all of them, or the activated ones)."""
    expert = 3 * c.dim * c.moe_inter_dim
    router = c.n_routed_experts * c.dim + c.n_routed_experts  # weight + e_score_correction_bias
    return (experts + c.n_shared_experts) * expert + router


def count_params(c: ModelConfig) -> ParamCount:
    emb = c.vocab_size * c.dim
    head = 0 if c.tie_embeddings else emb
    norms = 2 * c.dim
    attn = _attention(c) + norms
    dense = 3 * c.dim * c.inter_dim
    n_moe = sum(c.is_moe_layer(i) for i in range(c.n_layers))
    n_dense = c.n_layers - n_moe
    base = emb + head + c.dim + c.n_layers * attn + n_dense * dense
    total = base + n_moe * _moe(c, c.n_routed_experts)
    activated = base + n_moe * _moe(c, c.n_activated_experts)
    mtp_block = attn + (_moe(c, c.n_routed_experts) if c.moe else dense)
    mtp = c.n_mtp * (2 * c.dim + 2 * c.dim * c.dim + mtp_block + c.dim)
    if c.mla:
        per_layer = c.kv_lora_rank + c.qk_rope_head_dim  # latent + shared RoPE key
    else:
        per_layer = 2 * c.n_kv_heads * c.head_dim
    return ParamCount(total, activated, emb, mtp, 2 * per_layer * c.n_layers)


def human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on `device` (CUDA: free memory; CPU: MemAvailable, capped by the address
    space limit a `prlimit --as` or `ulimit -v` sets); None where r1kit cannot tell."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * resource.getpagesize()
            avail = min(avail if avail is not None else limit, max(limit - used, 0))
    except (OSError, ValueError, ImportError):
        pass
    return avail


def check_fits(c: ModelConfig, dtype, device, source) -> None:
    """Raise R1kitError naming `source` when the weights of config `c` in `dtype` exceed the memory available on
    `device`: a wrong config.json (say hidden_size 10^6) is then one line, not an allocator traceback or a kill."""
    import torch

    from r1kit.errors import file_error

    pc = count_params(c)
    need = (pc.total + pc.mtp) * torch.empty(0, dtype=dtype).element_size()
    avail = available_memory(device)
    if avail is not None and need > avail:
        raise file_error(source, f"the config describes {human(pc.total + pc.mtp)} parameters, "
                                 f"{need / 2**30:,.1f} GiB in {str(dtype).removeprefix('torch.')}, more than the "
                                 f"{avail / 2**30:,.1f} GiB available on {torch.device(device)}")
