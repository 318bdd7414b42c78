"""DeepSeek-V3 parts: MLA attention, DeepSeekMoE with auxiliary-loss-free balancing, and the MTP module.

`Block` in model.py picks `MLA` when `cfg.mla` and `MoE` when `cfg.is_moe_layer(i)`; `Transformer` builds `MTP`
modules when `cfg.n_mtp`. Module names equal the HF checkpoint keys without the leading `model.`
(docs/ARCHITECTURE.md 6.2), e.g. `layers.3.self_attn.kv_b_proj.weight`, `layers.3.mlp.gate.e_score_correction_bias`. MTP module k is stored by
HF as `model.layers.{n_layers + k}.*`; the checkpoint loader maps `mtp.{k}.` to and from that prefix.

Formulas and constants: docs/ARCHITECTURE.md sections 3 (MLA), 4 (routing, balancing) and 5 (MTP).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from r1kit.model.config import ModelConfig
from r1kit.model.model import MLP, Block, RMSNorm, _yarn_mscale, apply_rope_interleaved, attend

# The low-rank norms use a fixed eps, as HF (`DeepseekV3RMSNorm(q_lora_rank)`) and the reference model.py do.
LORA_NORM_EPS = 1e-6


def softmax_scale(cfg: ModelConfig) -> float:
    """qk_head_dim^-0.5, times mscale^2 when rope_scaling sets mscale_all_dim (HF `yarn_apply_mscale`: it uses the
    config's `factor` as written, not max_seq_len / original_max_position_embeddings)."""
    scale = cfg.qk_head_dim ** -0.5
    rs = cfg.rope_scaling or {}
    if rs.get("rope_type", rs.get("type", "default")) != "default" and rs.get("mscale_all_dim"):
        m = _yarn_mscale(rs["factor"], rs["mscale_all_dim"])
        scale *= m * m
    return scale


# --------------------------------------------------------------------------------------------------------------
# MLA

class MLA(nn.Module):
    """Multi-head Latent Attention. Keys/values come from a shared kv_lora_rank latent plus one RoPE key shared by
    all heads. Without a cache K and V are expanded per head (training, prefill oracle); with a latent cache the
    up-projection is absorbed into q and the output, so only (kv_lora_rank + qk_rope_head_dim) values per token and
    layer are cached (docs/ARCHITECTURE.md 3)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.rank = cfg.n_heads, cfg.kv_lora_rank
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk = self.nope + self.rope_dim
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LORA_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.n_heads * qk, bias=False)
        else:
            self.q_proj = nn.Linear(cfg.dim, self.n_heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.dim, self.rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(self.rank, LORA_NORM_EPS)
        self.kv_b_proj = nn.Linear(self.rank, self.n_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dim, cfg.dim, bias=False)
        self.scale = softmax_scale(cfg)

    def forward(self, x, rope, cache=None, attn_mask=None):
        B, T, _ = x.shape
        H = self.n_heads
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if hasattr(self, "q_a_proj") else self.q_proj(x)
        q = q.view(B, T, H, -1).transpose(1, 2)  # (B, H, T, nope + rope)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)  # (B, T, rank): the normalised latent, what the cache stores
        cos, sin = rope
        q_pe = apply_rope_interleaved(q_pe, cos, sin)
        k_pe = apply_rope_interleaved(k_pe[:, None], cos, sin)  # (B, 1, T, rope): one key shared by all heads
        if cache is not None:
            c_all, pe_all = cache.update_latent(self.layer_idx, c_kv, k_pe[:, 0])  # (B, S, rank), (B, S, rope)
            y = self._absorbed(q_nope, q_pe, c_all, pe_all, attn_mask)
        else:
            kv = self.kv_b_proj(c_kv).view(B, T, H, -1).transpose(1, 2)  # (B, H, T, nope + v)
            k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
            k = torch.cat([k_nope, k_pe.expand(-1, H, -1, -1)], dim=-1)  # (B, H, T, nope + rope)
            y = attend(torch.cat([q_nope, q_pe], dim=-1), k, v, self.scale, attn_mask)  # (B, H, T, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _absorbed(self, q_nope, q_pe, c_kv, k_pe, attn_mask):
        """Attention against the latent cache. q_nope (B,H,T,nope), q_pe (B,H,T,rope), c_kv (B,S,rank),
        k_pe (B,S,rope) -> (B,H,T,v). q_nope.k_nope = (W_UK^T q_nope).c_kv and p.v = W_UV (p.c_kv), so neither K nor
        V is materialised. attn_mask None means causal aligned to the end (query t sits at position S-T+t)."""
        T, S = q_nope.shape[2], c_kv.shape[1]
        w = self.kv_b_proj.weight.view(self.n_heads, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]  # (H, nope, rank), (H, v, rank)
        q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # (B, H, T, rank)
        scores = (torch.einsum("bhtc,bsc->bhts", q_lat, c_kv)
                  + torch.einsum("bhtr,bsr->bhts", q_pe, k_pe)) * self.scale  # (B, H, T, S)
        if attn_mask is None and T > 1:
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        p = scores.float().softmax(dim=-1).to(q_lat.dtype)
        o = torch.einsum("bhts,bsc->bhtc", p, c_kv)  # (B, H, T, rank)
        return torch.einsum("bhtc,hdc->bhtd", o, w_uv)  # (B, H, T, v)


class LatentCache:
    """Reference MLA cache: preallocated (n_layers, B, max_len, rank) latents and (.., rope) RoPE keys with one
    position pointer, advanced after the last layer has written. The engine may use it or its own object with the
    same `update_latent` method. bf16 cost per token and layer: 2 * (rank + rope) bytes (1,152 for V3)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device=None):
        shape = (cfg.n_layers, batch_size, max_len)
        self.kv = torch.zeros(*shape, cfg.kv_lora_rank, dtype=dtype, device=device)
        self.pe = torch.zeros(*shape, cfg.qk_rope_head_dim, dtype=dtype, device=device)
        self.pos, self.last_layer = 0, cfg.n_layers - 1

    def update_latent(self, layer_idx: int, c_kv: torch.Tensor, k_pe: torch.Tensor):
        """Write c_kv (B, T, rank) and k_pe (B, T, rope) at the pointer; return everything cached so far."""
        end = self.pos + c_kv.shape[1]
        if end > self.kv.shape[2]:
            raise ValueError(f"LatentCache overflow: {end} > max_len {self.kv.shape[2]}")
        self.kv[layer_idx, :, self.pos:end] = c_kv
        self.pe[layer_idx, :, self.pos:end] = k_pe
        out = self.kv[layer_idx, :, :end], self.pe[layer_idx, :, :end]
        if layer_idx == self.last_layer:
            self.pos = end
        return out

    def reset(self):
        self.pos = 0


# --------------------------------------------------------------------------------------------------------------
# DeepSeekMoE routing

def route(logits: torch.Tensor, bias: torch.Tensor, k: int, n_group: int, topk_group: int, route_scale: float):
    """Sigmoid top-k routing with group limit (reference `Gate.forward`). logits (N, E) fp32 ->
    weights (N, k) fp32 (unbiased scores, normalised, times route_scale), indices (N, k), scores (N, E).

    The bias only changes which experts are selected. Groups are ranked by the sum of their top-2 biased scores;
    experts outside the topk_group best groups get -inf, as the reference inference code since 2025-02 and
    transformers 5.x. The original HF remote code used 0.0, which lets a dropped group's expert win when a kept
    group's biased score is negative; r1kit pins -inf (tests/test_deepseek.py::test_group_mask_is_minus_inf)."""
    scores = logits.sigmoid()  # (N, E)
    biased = scores + bias
    N, E = biased.shape
    if n_group > 1:
        g = biased.view(N, n_group, E // n_group)
        group_score = g.topk(min(2, E // n_group), dim=-1).values.sum(-1)  # (N, G)
        keep = torch.zeros_like(group_score, dtype=torch.bool)
        keep.scatter_(1, group_score.topk(topk_group, dim=-1).indices, True)
        biased = g.masked_fill(~keep[..., None], float("-inf")).view(N, E)
    idx = biased.topk(k, dim=-1).indices  # (N, k)
    w = scores.gather(1, idx)
    w = w / (w.sum(-1, keepdim=True) + 1e-20) * route_scale
    return w, idx, scores


def balance_loss(scores: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """Sequence-wise balance loss without alpha: mean over sequences of sum_i f_i P_i (docs/ARCHITECTURE.md 4).
    scores (B, T, E) sigmoid affinities, idx (B, T, k) selected experts. Uniform routing gives 1.0."""
    B, T, E = scores.shape
    f = torch.zeros(B, E, device=scores.device).scatter_add_(
        1, idx.reshape(B, -1), torch.ones(B, T * k, device=scores.device)) * (E / (k * T))  # (B, E), no grad
    P = (scores / scores.sum(-1, keepdim=True)).mean(1)  # (B, E)
    return (f * P).sum(-1).mean()


class Gate(nn.Module):
    """The router: `weight` (E, dim) and the fp32 selection bias `e_score_correction_bias` (E,). The bias is a
    Parameter without grad (so parameter counts include it, as params.py does) kept fp32 through `.to(dtype)`;
    it changes only through `update_moe_bias`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k, self.n_group, self.topk_group, self.route_scale = \
            cfg.n_activated_experts, cfg.n_group, cfg.topk_group, cfg.route_scale
        E = cfg.n_routed_experts
        if E % cfg.n_group or cfg.n_activated_experts > cfg.topk_group * E // cfg.n_group:
            raise ValueError(f"routing needs n_group | n_routed_experts and n_activated_experts <= topk_group * "
                             f"experts per group; got E={E}, n_group={cfg.n_group}, topk_group={cfg.topk_group}, "
                             f"k={cfg.n_activated_experts}")
        self.weight = nn.Parameter(torch.empty(E, cfg.dim).normal_(std=cfg.init_std))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(E), requires_grad=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.e_score_correction_bias.data = self.e_score_correction_bias.data.float()  # HF keeps it fp32 too
        return self

    def forward(self, x):  # x (N, dim) -> weights (N, k) fp32, indices (N, k), scores (N, E) fp32
        logits = F.linear(x.float(), self.weight.float())  # router in fp32, as HF and the reference
        return route(logits, self.e_score_correction_bias, self.k, self.n_group, self.topk_group, self.route_scale)


class MoE(nn.Module):
    """Routed SwiGLU experts + shared experts. Token slots are sorted by expert so each expert runs once on its
    tokens (a loop over experts, never over tokens). Bookkeeping: `last_load` (E,) token count per expert of the
    last forward; `load` accumulates counts in training mode until `update_moe_bias`; `aux_loss` holds
    aux_alpha * balance loss of the last training forward when aux_alpha > 0 (see `moe_aux_loss`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.k = cfg.n_routed_experts, cfg.n_activated_experts
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(cfg.dim, cfg.moe_inter_dim) for _ in range(self.n_experts))
        self.shared_experts = MLP(cfg.dim, cfg.moe_inter_dim * cfg.n_shared_experts) if cfg.n_shared_experts else None
        # plain tensors, not buffers: bookkeeping, not state (and meta-device loaders fill every buffer)
        self.load: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None
        self.aux_alpha, self.aux_loss = 0.0, None

    def forward(self, x):
        B, T, D = x.shape
        xf = x.reshape(-1, D)  # (N, D)
        w, idx, scores = self.gate(xf)  # (N, k), (N, k), (N, E)
        flat = idx.flatten()  # (N*k,) slot j belongs to token j // k
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)  # (E,)
        tok, wsort = order // self.k, w.flatten()[order]  # sorted slots' token and weight
        y = torch.zeros_like(xf)
        start = 0
        for e, n in enumerate(counts.tolist()):  # one host sync per layer
            if n:
                t = tok[start:start + n]
                y.index_add_(0, t, (self.experts[e](xf[t]) * wsort[start:start + n, None]).to(y.dtype))
                start += n
        if self.shared_experts is not None:
            y = y + self.shared_experts(xf)
        from r1kit.model.model import recomputing
        if recomputing():  # activation checkpointing re-runs this forward: these tokens were counted already
            return y.view(B, T, D)
        self.last_load = counts.detach()
        if self.training:
            self.load = counts.detach() if self.load is None else self.load + counts.detach()
            self.aux_loss = self.aux_alpha * balance_loss(scores.view(B, T, -1), idx.view(B, T, -1), self.k) \
                if self.aux_alpha > 0 else None
        return y.view(B, T, D)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def set_aux_alpha(model: nn.Module, alpha: float):
    """Turn on the sequence-wise balance loss (DeepSeek-V3: alpha = 1e-4) in every MoE layer."""
    for m in moe_layers(model):
        m.aux_alpha = alpha


def moe_aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the MoE layers' balance losses from the last training forward (0.0 when off); add it to the loss."""
    losses = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else 0.0


@torch.no_grad()
def update_moe_bias(model: nn.Module, gamma: float):
    """Auxiliary-loss-free balancing, after each optimiser step: b_i += gamma * sign(mean_load - load_i) with the
    load counted since the last call (summed over data-parallel ranks when torch.distributed is up)."""
    for m in moe_layers(model):
        if m.load is None:
            continue
        load = m.load.float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        if load.sum() > 0:
            bias, delta = m.gate.e_score_correction_bias, gamma * torch.sign(load.mean() - load)
            if hasattr(bias, "device_mesh"):  # sharded by FSDP2: add to this rank's part of the vector
                from torch.distributed.tensor import distribute_tensor
                delta = distribute_tensor(delta, bias.device_mesh, bias.placements)
            bias += delta
        m.load = None


def expert_load_stats(model: nn.Module) -> dict:
    """Balance of the last forward's expert loads, averaged over MoE layers (min clamped to one token)."""
    loads = [m.last_load.float() for m in moe_layers(model) if m.last_load is not None]
    if not loads:
        return {}
    L = torch.stack(loads)  # (layers, E)
    mx, mean = L.max(1).values, L.mean(1)
    ratio = mx / L.min(1).values.clamp(min=1)
    return {"load_max_min": ratio.mean().item(), "load_max_min_worst": ratio.max().item(),
            "load_max_mean": (mx / mean).mean().item(), "load_cv": (L.std(1) / mean).mean().item()}


# --------------------------------------------------------------------------------------------------------------
# Multi-token prediction

class MTP(Block):
    """Depth-1 MTP module: h' = eh_proj([enorm(emb(t_{i+1})), hnorm(h_i)]) (embedding first, as vLLM's
    deepseek_mtp, for weight compatibility), then one Block (MLA + MoE for V3; its submodules keep HF names
    `self_attn`, `mlp`, `input_layernorm`, `post_attention_layernorm`), then logits = lm_head(shared_head.norm(h)).
    Embedding and head are the main model's; HF checkpoints also store copies as `embed_tokens` and
    `shared_head.head` in this layer, which r1kit does not hold."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.shared_head = nn.Module()
        self.shared_head.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, h, emb, rope, attn_mask=None):
        """h (B, T, D) previous depth's hidden states, emb (B, T, D) embeddings of the tokens one ahead ->
        (B, T, D) hidden states (before shared_head.norm)."""
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return super().forward(x, rope, None, attn_mask)


def mtp_loss(model: nn.Module, h: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor, rope,
             reduction: str = "mean") -> torch.Tensor:
    """Mean over MTP depths of the cross-entropy of module k (0-based) predicting the token k+2 places ahead.

    h (B, T, D): main-model hidden states before the final norm (the h^0 model.py passes); ids (B, T);
    targets (B, T) next-token targets with -100 = ignore, so module k's targets are targets[:, k+1:]. Each depth
    drops one trailing position (paper 2.2: h^k covers 1..T-k). rope: the main model's (cos, sin) for 0..T-1. reduction="sum": the sum over depths and targets instead
    (micro-batched training divides by the whole batch's count)."""
    cos, sin = rope
    T, losses = ids.shape[1], []
    for k, mod in enumerate(model.mtp):
        n = T - k - 1  # positions with a token k+1 ahead
        if n <= 0:
            break
        h = mod(h[:, :n], model.embed_tokens(ids[:, k + 1:]), (cos[..., :n, :], sin[..., :n, :]))
        logits = model.lm_head(mod.shared_head.norm(h))  # (B, n, V)
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), targets[:, k + 1:].flatten(), ignore_index=-100,
                                      reduction=reduction))
    return torch.stack(losses).sum() if reduction == "sum" else torch.stack(losses).mean()


@contextmanager
def prenorm_states(model: nn.Module):
    """Collect the hidden states entering the final norm (the h^0 MTP starts from) during forwards inside the
    block -> a list of (B, T_i, D) tensors, one per model call (a shared-prefix forward makes two)."""
    seen: list[torch.Tensor] = []
    handle = model.norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()
