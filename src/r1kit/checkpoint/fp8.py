"""Block-wise FP8 weights, as in the DeepSeek-V3/R1 checkpoints (docs/ARCHITECTURE.md 6.1).

A quantised Linear weight W (out, in) is stored as `<name>` in float8_e4m3fn plus `<name>_scale_inv` float32 of
shape (ceil(out/128), ceil(in/128)); W[i, j] = float(W_fp8[i, j]) * scale_inv[i // 128, j // 128].

Never FP8 in those checkpoints: `embed_tokens`, `lm_head`, every RMSNorm weight (`*norm*`), the router
`mlp.gate.weight` and its fp32 `mlp.gate.e_score_correction_bias`, biases, and in the MTP layer `eh_proj` and the
copies `embed_tokens` / `shared_head.head` (`is_fp8_weight` encodes this).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
_NEVER_FP8 = ("embed_tokens", "lm_head", "norm", "mlp.gate.weight", "eh_proj", "shared_head.head")


def is_fp8_weight(name: str) -> bool:
    """Whether a DeepSeek-V3 FP8 checkpoint stores this tensor in FP8 (2-D Linear weights except the list above)."""
    return name.endswith(".weight") and not any(s in name for s in _NEVER_FP8)


def quantize_fp8_blocks(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in) -> (w_fp8 (out, in) float8_e4m3fn, scale_inv (ceil(out/block), ceil(in/block)) fp32) with
    scale_inv = block amax / 448. Edges are zero-padded only to compute amax; an all-zero block gets scale 1."""
    out, inp = w.shape
    wp = F.pad(w.float(), (0, -inp % block, 0, -out % block))  # (O, I), multiples of block
    O, I = wp.shape
    amax = wp.view(O // block, block, I // block, block).abs().amax(dim=(1, 3))  # (O/b, I/b)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (wp / _expand(scale, block, O, I)).clamp(-FP8_MAX, FP8_MAX)[:out, :inp].to(FP8)
    return q, scale


def dequantize_fp8_blocks(w_fp8: torch.Tensor, scale_inv: torch.Tensor, dtype=torch.bfloat16,
                          block: int = 128) -> torch.Tensor:
    """Inverse of `quantize_fp8_blocks`: W = float(W_fp8) * scale_inv[i // block, j // block], cast to dtype
    (bf16 by default, as the reference `fp8_cast_bf16.py`)."""
    out, inp = w_fp8.shape
    if scale_inv.shape != (-(-out // block), -(-inp // block)):
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not fit a {out}x{inp} weight")
    return (w_fp8.float() * _expand(scale_inv.float(), block, out, inp)).to(dtype)


def _expand(scale: torch.Tensor, block: int, out: int, inp: int) -> torch.Tensor:
    """(ceil(out/b), ceil(in/b)) per-block values -> (out, in) per-element."""
    return scale.repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inp]


def quantize_state_dict(tensors: Mapping[str, torch.Tensor], block: int = 128) -> dict[str, torch.Tensor]:
    """HF-named tensors -> the FP8 checkpoint layout: `is_fp8_weight` 2-D weights become float8 plus
    `<name>_scale_inv`; everything else is kept as is."""
    out = {}
    for name, t in tensors.items():
        if is_fp8_weight(name) and t.dim() == 2:
            out[name], out[name + "_scale_inv"] = quantize_fp8_blocks(t, block)
        else:
            out[name] = t
    return out


def dequantize_state_dict(tensors: Mapping[str, torch.Tensor],
                          scales_lookup: Callable[[str], torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
                          dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """One shard's tensors -> the same without FP8: every float8_e4m3fn `*.weight` is multiplied out with its
    `<name>_scale_inv`, taken from `tensors` itself or else from `scales_lookup` (a callable `get_scale(key)` or a
    mapping; the scale may live in another shard), and all `*_scale_inv` keys are dropped."""
    get = scales_lookup if callable(scales_lookup) else (scales_lookup or {}).__getitem__
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == FP8 and name.endswith(".weight"):
            key = name + "_scale_inv"
            try:
                scale = tensors[key] if key in tensors else get(key)
            except KeyError:
                raise KeyError(f"FP8 weight {name} has no {key} in its shard or the lookup") from None
            t = dequantize_fp8_blocks(t, scale, dtype)
        out[name] = t
    return out


def scale_getter(folder: str | Path) -> Callable[[str], torch.Tensor]:
    """`get_scale(key)` that reads one tensor from whichever shard `model.safetensors.index.json` names."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else {}

    def get(key: str) -> torch.Tensor:
        if key not in weight_map:
            raise KeyError(key)
        with safe_open(folder / weight_map[key], framework="pt") as f:
            return f.get_tensor(key)

    return get
