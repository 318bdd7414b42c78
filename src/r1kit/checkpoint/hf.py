"""Hugging Face checkpoint layout: `config.json` + `model.safetensors` (or shards + `model.safetensors.index.json`).

r1kit module names equal the HF keys without the leading `model.` (`lm_head` has none), and the MTP module k is
HF layer `num_hidden_layers + k`. Shards are read one at a time into a model built on the meta device, so peak
memory stays at the model plus one shard. FP8 block-quantised weights are dequantised on load (see fp8.py).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from r1kit.errors import R1kitError, file_error
from r1kit.model.config import ModelConfig
from r1kit.model.model import Transformer, rope_inv_freq
from r1kit.model.params import check_fits

ARCH_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}
CLASS_ARCHS = {v: k for k, v in ARCH_CLASSES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# config.json key -> ModelConfig field, for every architecture
_COMMON = {"vocab_size": "vocab_size", "hidden_size": "dim", "num_hidden_layers": "n_layers",
           "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads", "intermediate_size": "inter_dim",
           "rms_norm_eps": "norm_eps", "max_position_embeddings": "max_seq_len",
           "tie_word_embeddings": "tie_embeddings", "bos_token_id": "bos_id", "eos_token_id": "eos_id",
           "initializer_range": "init_std"}
_DEEPSEEK = {"q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank", "qk_nope_head_dim": "qk_nope_head_dim",
             "qk_rope_head_dim": "qk_rope_head_dim", "v_head_dim": "v_head_dim",
             "n_routed_experts": "n_routed_experts", "n_shared_experts": "n_shared_experts",
             "num_experts_per_tok": "n_activated_experts", "moe_intermediate_size": "moe_inter_dim",
             "n_group": "n_group", "topk_group": "topk_group", "routed_scaling_factor": "route_scale",
             "first_k_dense_replace": "first_k_dense", "num_nextn_predict_layers": "n_mtp"}
# Values r1kit implements and nothing else; a checkpoint that says otherwise is rejected rather than misread.
_REQUIRED = {"hidden_act": ("silu",), "scoring_func": ("sigmoid",), "topk_method": ("noaux_tc",),
             "norm_topk_prob": (True,), "mlp_bias": (False,), "use_sliding_window": (False,)}


def config_from_hf(d: dict, source="config.json") -> ModelConfig:
    archs = d.get("architectures") or []
    arch = next((CLASS_ARCHS[a] for a in archs if a in CLASS_ARCHS), None)
    if arch is None:
        arch = d.get("model_type") if d.get("model_type") in ARCH_CLASSES and not archs else None
    if arch is None:
        raise file_error(source, f"unsupported architecture {archs or d.get('model_type')!r} "
                                 f"(supported: {', '.join(ARCH_CLASSES.values())})")
    for key, ok in _REQUIRED.items():
        if key in d and d[key] not in ok:
            raise file_error(source, f"unsupported {key}={d[key]!r} (r1kit implements {ok[0]!r})")
    keys = _COMMON | (_DEEPSEEK if arch == "deepseek_v3" else {})
    kw = {field: d[k] for k, field in keys.items() if d.get(k) is not None}
    for k in ("bos_id", "eos_id"):  # some configs list several eos ids; the first is the canonical one
        if isinstance(kw.get(k), list):
            kw[k] = kw[k][0]
    rope = d.get("rope_parameters") or {}  # transformers v5 nests theta and scaling here
    kw["rope_theta"] = float(d.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    scaling = d.get("rope_scaling") or {k: v for k, v in rope.items() if k != "rope_theta"}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        kw["rope_scaling"] = dict(scaling)
    if arch == "qwen2":
        kw["qkv_bias"] = True
    elif arch == "llama":
        if d.get("attention_bias"):
            raise file_error(source, "unsupported attention_bias=true for llama")
        if d.get("head_dim"):
            kw["head_dim"] = d["head_dim"]
    if arch == "deepseek_v3":
        kw.setdefault("tie_embeddings", False)
        kw["q_lora_rank"] = d.get("q_lora_rank") or 0
    else:
        kw.setdefault("tie_embeddings", False)
    known = set(keys) | set(_REQUIRED) | {"architectures", "model_type", "rope_theta", "rope_scaling",
                                          "rope_parameters", "head_dim", "attention_bias", "torch_dtype", "dtype",
                                          "transformers_version", "quantization_config"}
    kw["extra"] = {k: v for k, v in d.items() if k not in known}
    try:
        return ModelConfig(arch=arch, **kw)
    except (TypeError, ValueError) as e:
        raise file_error(source, f"invalid config: {e}") from None


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype | None = None) -> dict:
    d = dict(cfg.extra)
    d |= {"architectures": [ARCH_CLASSES[cfg.arch]], "model_type": cfg.arch, "hidden_act": "silu",
          "rope_theta": cfg.rope_theta}
    keys = _COMMON | (_DEEPSEEK if cfg.arch == "deepseek_v3" else {})
    for k, field in keys.items():
        d[k] = getattr(cfg, field)
    if cfg.rope_scaling:
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if cfg.arch == "llama":
        d |= {"head_dim": cfg.head_dim, "attention_bias": False, "mlp_bias": False}
    if cfg.arch == "qwen2":
        d |= {"use_sliding_window": False, "sliding_window": None}
    if cfg.arch == "deepseek_v3":
        d |= {"q_lora_rank": cfg.q_lora_rank or None, "head_dim": cfg.qk_rope_head_dim, "scoring_func": "sigmoid",
              "topk_method": "noaux_tc", "norm_topk_prob": True, "attention_bias": False,
              "rope_interleave": True}
    if dtype is not None:
        d["torch_dtype"] = str(dtype).removeprefix("torch.")
    return d


# --------------------------------------------------------------------------------------------------------------
# key names

def to_hf_key(name: str, cfg: ModelConfig) -> str:
    if name.startswith("lm_head."):
        return name
    m = re.match(r"mtp\.(\d+)\.(.*)", name)
    if m:
        return f"model.layers.{cfg.n_layers + int(m[1])}.{m[2]}"
    return "model." + name


def from_hf_key(key: str, cfg: ModelConfig) -> str | None:
    """The r1kit name of an HF key, or None for keys r1kit derives instead of loading."""
    if key.startswith("lm_head."):
        return key
    if not key.startswith("model."):
        return key  # unknown: reported by the loader as unexpected
    name = key[len("model."):]
    m = re.match(r"layers\.(\d+)\.(.*)", name)
    if m and int(m[1]) >= cfg.n_layers:
        k = int(m[1]) - cfg.n_layers
        if k >= cfg.n_mtp:
            return None  # an MTP module this config does not build (e.g. n_mtp=0): inference needs no MTP
        # the MTP layer stores copies of the shared embedding and head; r1kit ties them to the main ones
        if m[2] in ("embed_tokens.weight", "shared_head.head.weight"):
            return None
        return f"mtp.{k}.{m[2]}"
    if name.endswith("rotary_emb.inv_freq"):
        return None
    return name


# --------------------------------------------------------------------------------------------------------------
# reading

def _shards(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Shard files in order and the weight map (key -> file name)."""
    index = folder / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise file_error(index, f"invalid index ({e})") from None
        files = sorted(set(weight_map.values()))
        return [folder / f for f in files], weight_map
    single = folder / SINGLE
    if not single.exists():
        raise file_error(folder, f"no {SINGLE} or {INDEX} found")
    return [single], {}


def _keys(folder: Path) -> list[str]:
    files, weight_map = _shards(folder)
    if weight_map:
        return list(weight_map)
    with _open(files[0]) as f:
        return list(f.keys())


def _open(path: Path):
    if not path.exists():
        raise file_error(path, "file not found")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise file_error(path, f"corrupt safetensors file ({e})") from None


def iter_tensors(folder: str | Path):
    """Yield (hf_key, tensor) shard by shard, dequantising FP8 weights with scales found via the weight map."""
    folder = Path(folder)
    files, weight_map = _shards(folder)
    for path in files:
        with _open(path) as f:
            try:
                keys = list(f.keys())
                tensors = {k: f.get_tensor(k) for k in keys}
            except (SafetensorError, RuntimeError) as e:
                raise file_error(path, f"corrupt safetensors file ({e})") from None
        if any(t.dtype == torch.float8_e4m3fn for t in tensors.values()):
            from r1kit.checkpoint.fp8 import dequantize_state_dict

            def get_scale(name, _local=tensors):
                if name in _local:
                    return _local[name]
                if name not in weight_map:
                    raise file_error(path, f"FP8 weight without its scale {name}")
                with _open(folder / weight_map[name]) as g:
                    return g.get_tensor(name)

            tensors = dequantize_state_dict(tensors, get_scale)
        else:
            tensors = {k: v for k, v in tensors.items() if not k.endswith("_scale_inv")}
        for k, t in tensors.items():  # a NaN weight would otherwise surface as NaN logits, far from its cause
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise file_error(path, f"tensor {k} contains NaN or infinite values")
        yield from tensors.items()


def load_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise file_error(path, "file not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise file_error(path, f"invalid JSON ({e})") from None
    return config_from_hf(d, source=path)


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, by HF key (FP8 weights dequantised)."""
    return dict(iter_tensors(folder))


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32, device="cpu",
               cfg: ModelConfig | None = None) -> Transformer:
    """Build on the meta device, then fill parameters shard by shard: memory stays at the model plus one shard."""
    folder = Path(folder)
    if not folder.exists():
        raise file_error(folder, "not found")
    cfg = cfg or load_config(folder)
    if cfg.n_mtp:  # transformers saves DeepSeek-V3 without the MTP layers its config announces: build what exists
        keys = _keys(folder)
        present = sum(any(k.startswith(f"model.layers.{cfg.n_layers + i}.") for k in keys) for i in range(cfg.n_mtp))
        cfg = cfg.replace(n_mtp=present)
    check_fits(cfg, dtype, device, folder / "config.json")  # before allocating: a wrong size is one line, not OOM
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.to(dtype)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    missing = {n for n in params if n != "inv_freq"}
    if cfg.tie_embeddings:
        missing.discard("lm_head.weight")
    unexpected = []
    with torch.no_grad():
        for key, t in iter_tensors(folder):
            name = from_hf_key(key, cfg)
            if name is None or (name == "lm_head.weight" and cfg.tie_embeddings):
                continue
            if name not in params:
                unexpected.append(key)
                continue
            p = params[name]
            if p.shape != t.shape:
                raise file_error(folder, f"{key} has shape {tuple(t.shape)}, the config expects {tuple(p.shape)}")
            p.copy_(t.to(p.dtype) if p.is_floating_point() else t)
            missing.discard(name)
        model.inv_freq.copy_(rope_inv_freq(cfg, model.inv_freq.numel() * 2)[0])
    if cfg.tie_embeddings and "embed_tokens.weight" not in missing:
        model.lm_head.weight = model.embed_tokens.weight
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {sorted(missing)[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[0]})")
        raise file_error(folder, "checkpoint does not match its config: " + "; ".join(parts))
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# writing

def hf_state_dict(model: Transformer, state: dict | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors (or `state`, a full state dict of it, e.g. gathered from shards) under HF keys (tied
    heads omitted; MTP copies of the shared embedding/head added)."""
    cfg = model.cfg
    state = model.state_dict() if state is None else state
    out = {}
    for name, t in state.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        out[to_hf_key(name, cfg)] = t
    for k in range(cfg.n_mtp):
        layer = f"model.layers.{cfg.n_layers + k}"
        out[f"{layer}.embed_tokens.weight"] = state["embed_tokens.weight"]
        out[f"{layer}.shared_head.head.weight"] = state.get("lm_head.weight", state["embed_tokens.weight"])
    return out


def _atomic_save(tensors: dict, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(folder: str | Path, cfg: ModelConfig, tensors: dict[str, torch.Tensor],
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json and the HF-keyed `tensors`, sharded above `max_shard_bytes` (each file atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # safetensors refuses shared storage: give aliased tensors (tied copies) their own memory
    seen = set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[k] = v.clone()
        seen.add(ptr)
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)
    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += nbytes
    shards.append(cur)
    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        _atomic_save(shards[0], folder / SINGLE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, folder / name)
            weight_map |= dict.fromkeys(shard, name)
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic_write_text(json.dumps(index, indent=2), folder / INDEX)
    _atomic_write_text(json.dumps(config_to_hf(cfg, dtype), indent=2), folder / "config.json")
    return folder


def save_model(model: Transformer, folder: str | Path, max_shard_bytes: int = 5 * 2**30) -> Path:
    """A model's checkpoint. A model sharded by FSDP2 (under torchrun; every rank calls this) is gathered to rank 0,
    which alone writes."""
    from r1kit.train import dist

    if not dist.is_sharded(model):
        return save_checkpoint(folder, model.cfg, hf_state_dict(model), max_shard_bytes)
    full = dist.full_state_dict(model)
    return dist.on_main(lambda: save_checkpoint(folder, model.cfg, hf_state_dict(model, full), max_shard_bytes))


__all__ = ["config_from_hf", "config_to_hf", "load_config", "load_model", "load_state_dict", "iter_tensors",
           "save_checkpoint", "save_model", "hf_state_dict", "R1kitError"]
