"""The r1kit decoder: one trainable module for Llama, Qwen2 and DeepSeek-V3 checkpoints.

The model maps token ids to logits (or to per-token losses for training). It owns no generation logic: KV caches,
sampling and batching live in `r1kit.engine`, which passes a cache object in. Module names mirror the Hugging Face
checkpoint keys (`layers.N.self_attn.q_proj`, `layers.N.mlp.gate_proj`, ...) so checkpoint IO is a prefix rename.
The DeepSeek-V3 parts (MLA, MoE, MTP) live in `deepseek.py` and slot into `Block` by config.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from r1kit.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 and cast back before scaling, as the reference implementations do.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# --------------------------------------------------------------------------------------------------------------
# RoPE. Frequencies follow HF's rope_utils for "default", "llama3" and "yarn" scaling.

def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(cfg: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (dim/2,) and the cos/sin scale factor for a rotary dimension `dim`."""
    base = cfg.rope_theta
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind in ("default", None):
        return inv_freq.float(), 1.0
    if kind == "linear":
        return (inv_freq / rs["factor"]).float(), 1.0
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
        return torch.where(medium, smoothed, scaled).float(), 1.0
    if kind == "yarn":
        # The factor as written (transformers 5.x and DeepSeek's reference); older HF code re-derived it from
        # max_position_embeddings / original, which agrees for every published config.
        factor = rs["factor"]
        orig = rs.get("original_max_position_embeddings") or cfg.max_seq_len
        beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

        def corr_dim(rot):
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        inv = inv_freq / factor * ramp + inv_freq * (1 - ramp)
        attn_factor = rs.get("attention_factor")
        if attn_factor is None:
            m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
            attn_factor = (_yarn_mscale(factor, m) / _yarn_mscale(factor, m_all)) if m and m_all \
                else _yarn_mscale(factor)
        return inv.float(), float(attn_factor)
    raise ValueError(f"unsupported rope_scaling type {kind!r}")


def rope_cos_sin(inv_freq: torch.Tensor, scale: float, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, ...]:
    """cos, sin of shape (*positions.shape, dim/2), computed in fp32 then cast."""
    freqs = positions.float()[..., None] * inv_freq.to(positions.device)
    return (freqs.cos() * scale).to(dtype), (freqs.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotation (HF/neox `rotate_half`) of x (B, H, T, D) with cos/sin (T, D/2) or (B, T, D/2)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pairwise rotation of (x[2j], x[2j+1]) (GPT-J style), the convention of DeepSeek-V3 checkpoints."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


# --------------------------------------------------------------------------------------------------------------

def attend(q, k, v, scale: float, attn_mask=None):
    """Scaled dot-product attention. q (B, H, T, D), k/v (B, Hkv, S, D). attn_mask None means causal with
    T == S (no mask at all when T == 1); else a bool (True = attend) or additive mask broadcastable to (B, H, T, S)."""
    causal = attn_mask is None and q.shape[2] > 1
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if T == 1 and q.device.type == "cpu":
        # CPU decode: two batched matmuls; the rep query heads that share a kv head are the rows of one product, so
        # the cache is read once, in place. Faster than the CPU flash kernel, which tiles for long queries, at these
        # shapes (SmolLM2, 16 rows: 60 / 150 / 250 positions 2.4x / 1.35x / 1.2x; all 30 layers, cold: 1.3x).
        s = torch.matmul(q.view(B, Hkv, H // Hkv, D), k.transpose(-1, -2)).mul_(scale)  # (B, Hkv, rep, S)
        if attn_mask is not None:
            s = s.masked_fill_(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s.add_(attn_mask)
        return torch.matmul(s.softmax(-1), v).view(B, H, 1, v.shape[-1])
    if Hkv != H and T == 1:
        # GQA decode: the rep query heads that share a kv head become rows of one query, so the cache is read in
        # place instead of being copied rep times (a bool/additive mask (B, 1, 1, S) broadcasts over the rows).
        y = F.scaled_dot_product_attention(q.view(B, Hkv, H // Hkv, D), k, v, attn_mask=attn_mask, scale=scale)
        return y.reshape(B, H, 1, v.shape[-1])
    if Hkv != H:  # GQA: share each kv head with n_rep query heads
        n_rep = H // Hkv
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=scale)


class Attention(nn.Module):
    """Grouped-query attention with RoPE (Llama, Qwen2)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.dim, bias=False)
        self.scale = self.hd ** -0.5

    def qkv(self, x):
        # one method, so that the CPU engine can swap in a single fused matmul (engine/cpu.py)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, rope, cache=None, attn_mask=None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # the engine's cache appends k, v and hands back the whole sequence
            k, v = cache.update(self.layer_idx, k, v)
        y = attend(q, k, v, self.scale, attn_mask)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter_dim, bias=False)
        self.up_proj = nn.Linear(dim, inter_dim, bias=False)
        self.down_proj = nn.Linear(inter_dim, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.mla:
            from r1kit.model.deepseek import MLA
            self.self_attn = MLA(cfg, layer_idx)
        else:
            self.self_attn = Attention(cfg, layer_idx)
        if cfg.is_moe_layer(layer_idx):
            from r1kit.model.deepseek import MoE
            self.mlp = MoE(cfg)
        else:
            self.mlp = MLP(cfg.dim, cfg.inter_dim)

    def forward(self, x, rope, cache=None, attn_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


_RECOMPUTING = False


def recomputing() -> bool:
    """True while activation checkpointing re-runs a block in the backward pass, or inside `uncounted()`:
    bookkeeping that must count each token once (the MoE load) skips that forward."""
    return _RECOMPUTING


@contextlib.contextmanager
def _recompute_flag():
    global _RECOMPUTING
    prev, _RECOMPUTING = _RECOMPUTING, True
    try:
        yield
    finally:
        _RECOMPUTING = prev


def uncounted():
    """Forwards whose tokens are not data (a rank's zero-weight padding pass): the MoE load does not count them."""
    return _recompute_flag()


def _checkpoint_contexts():
    return contextlib.nullcontext(), _recompute_flag()


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Activation checkpointing per block: keep only each block's input and recompute the block in the backward
        # (about one extra forward of compute for activations that no longer grow with the layer count).
        self.grad_checkpointing = False
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if cfg.n_mtp:
            from r1kit.model.deepseek import MTP
            self.mtp = nn.ModuleList(MTP(cfg, cfg.n_layers + k) for k in range(cfg.n_mtp))
        rot_dim = cfg.qk_rope_head_dim if cfg.mla else cfg.head_dim
        inv_freq, self.rope_scale = rope_inv_freq(cfg, rot_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def rope(self, positions: torch.Tensor, dtype):
        return rope_cos_sin(self.inv_freq, self.rope_scale, positions, dtype)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *, positions=None, cache=None,
                attn_mask=None, reduction: str = "mean", last_only: bool = False, logits_from: int = 0,
                mtp_weight: float = 0.0, hidden: bool = False):
        """ids (B, T) -> logits (B, T, V), or (B, 1, V) with last_only, or (B, T - logits_from, V): RL needs the
        completion's positions only, and the head over a large vocabulary is a big share of a small model's cost.

        With targets (B, T) (-100 = ignore) it returns the cross-entropy instead: a scalar for reduction="mean",
        or per-token (B, T) values, i.e. -log p(target), for reduction="none" (what RL needs).
        positions (T,) or (B, T) default to 0..T-1; `cache` and `attn_mask` come from the engine.
        mtp_weight > 0 adds the MTP modules' loss times that weight (DeepSeek-V3's lambda) to a mean loss.
        hidden=True returns the final-norm hidden states (B, T - logits_from, D) instead of logits, for losses that
        apply the LM head in chunks (r1kit.train.logprobs) so the (B, T, V) logits never exist.
        """
        B, T = ids.shape
        if positions is None:
            positions = torch.arange(T, device=ids.device)
        x = self.embed_tokens(ids)
        rope = self.rope(positions, x.dtype)
        # a cache may join checkpointing only if re-running a block through it is side-effect free
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled() and \
            (cache is None or getattr(cache, "recomputable", False))
        for layer in self.layers:
            if ckpt:
                x = checkpoint(layer, x, rope, cache, attn_mask, use_reentrant=False,
                               context_fn=_checkpoint_contexts)
            else:
                x = layer(x, rope, cache, attn_mask)
        h = x
        x = self.norm(x)
        if last_only:
            x = x[:, -1:]
        elif logits_from:
            x = x[:, logits_from:]
        if hidden:
            return x
        logits = self.lm_head(x)
        if targets is None:
            return logits
        if logits_from:
            raise ValueError("logits_from is for logits only, not with targets")
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                               reduction=reduction)
        if reduction == "none":
            return loss.view(B, T)
        if mtp_weight and self.cfg.n_mtp:
            loss = loss + mtp_weight * self.mtp_loss(h, ids, targets, rope)
        return loss

    def mtp_loss(self, h, ids, targets, rope):
        """Mean cross-entropy of the MTP modules: module k predicts the token k+1 places after each target."""
        from r1kit.model.deepseek import mtp_loss
        return mtp_loss(self, h, ids, targets, rope)

    @torch.no_grad()
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
