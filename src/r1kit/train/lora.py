"""LoRA adapters for SFT and RL: W x + (alpha / r) * B A x on chosen Linears, base weights frozen.

    lora.apply(model, LoRAConfig(rank=16))       # in place: targets become LoRALinear, only A and B train
    with lora.adapters_off(model): ...           # the base model: GRPO's reference, without a second copy
    lora.save_adapter(model, cfg, "out/")        # PEFT layout: adapter_config.json + adapter_model.safetensors
    merged = lora.merged(model)                  # a plain model with W + (alpha/r) B A, for export and rollouts

B starts at zero, so a fresh adapter leaves the model's outputs unchanged. A LoRALinear is an nn.Linear (the same
`weight` and `bias` names), so checkpoint keys, the engine's CPU kernels and FSDP see the base layer unchanged.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    rank: int = 0  # 0 = full fine-tune
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # Linear names (last component)
    dropout: float = 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update; `lora_enabled` False gives the base layer exactly."""

    def init_lora(self, cfg: LoRAConfig):
        p = self.weight
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, self.in_features, device=p.device, dtype=p.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, cfg.rank, device=p.device, dtype=p.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init: A random, B zero
        self.lora_scale, self.lora_dropout, self.lora_enabled = cfg.scale, cfg.dropout, True

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.lora_enabled:
            return y
        d = F.dropout(x, self.lora_dropout, self.training) if self.lora_dropout else x
        return y + F.linear(F.linear(d, self.lora_A), self.lora_B) * self.lora_scale

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.lora_scale  # (out, in)


def apply(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Turn the target Linears into LoRALinear in place and freeze everything but the adapters."""
    from r1kit.errors import R1kitError

    if cfg.rank <= 0:
        raise R1kitError(f"LoRA rank must be > 0, got {cfg.rank}")
    hit = 0
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in model.named_modules():
        if type(m) is nn.Linear and name.rsplit(".", 1)[-1] in cfg.targets:
            m.__class__ = LoRALinear
            m.init_lora(cfg)
            hit += 1
    if not hit:
        raise R1kitError(f"LoRA: no Linear named {', '.join(cfg.targets)} in the model")
    model.lora_config = cfg
    return model


def layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def is_lora(model: nn.Module) -> bool:
    return getattr(model, "lora_config", None) is not None


@contextlib.contextmanager
def adapters_off(model: nn.Module):
    """The base model for the duration (GRPO's reference when the policy is LoRA)."""
    ls = layers(model).values()
    for m in ls:
        m.lora_enabled = False
    try:
        yield model
    finally:
        for m in ls:
            m.lora_enabled = True


@torch.no_grad()
def merged(model: nn.Module, into: nn.Module | None = None) -> nn.Module:
    """A plain model whose Linears hold W + delta. `into` (a previous result) is updated in place, so an engine
    built on it sees new weights without a new allocation."""
    ls = layers(model)
    if into is None:
        into = copy.deepcopy(model)
        for name, m in layers(into).items():
            m.__class__ = nn.Linear
            del m.lora_A, m.lora_B
        into.lora_config = None
        into.requires_grad_(False)
    sub = dict(into.named_modules())
    for name, m in ls.items():
        sub[name].weight.copy_(m.weight + m.delta().to(m.weight.dtype))
    return into


def _peft_key(name: str, part: str, cfg) -> str:
    from r1kit.checkpoint.hf import to_hf_key
    hf = to_hf_key(f"{name}.weight", cfg)  # model.layers.N.self_attn.q_proj.weight
    return "base_model.model." + hf[: -len(".weight")] + f".{part}.weight"


def save_adapter(model: nn.Module, folder: str | Path, base: str = "", state: dict | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors in PEFT's layout (PeftModel.from_pretrained reads it).
    state: the model's full state dict, when its own tensors are shards (gathered under FSDP2)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg: LoRAConfig = model.lora_config
    tensors = {}
    for name, m in layers(model).items():
        for part in ("lora_A", "lora_B"):
            t = getattr(m, part) if state is None else state[f"{name}.{part}"]
            tensors[_peft_key(name, part, model.cfg)] = t.detach().contiguous().cpu()
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank, "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout, "target_modules": sorted(cfg.targets), "bias": "none",
            "fan_in_fan_out": False, "base_model_name_or_path": base, "inference_mode": True}
    (folder / "adapter_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    return folder


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply the PEFT adapter in `folder` to `model` (in place) and load its A and B."""
    from safetensors.torch import load_file

    from r1kit.errors import file_error

    folder = Path(folder)
    conf = json.loads((folder / "adapter_config.json").read_text())
    if not is_lora(model):
        apply(model, LoRAConfig(rank=conf["r"], alpha=conf["lora_alpha"], targets=list(conf["target_modules"]),
                                dropout=conf.get("lora_dropout", 0.0)))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    with torch.no_grad():
        for name, m in layers(model).items():
            for part in ("lora_A", "lora_B"):
                key = _peft_key(name, part, model.cfg)
                if key not in tensors:
                    raise file_error(folder / "adapter_model.safetensors", f"no tensor {key}")
                getattr(m, part).copy_(tensors[key])
    return model


def config_dict(model: nn.Module) -> dict | None:
    return asdict(model.lora_config) if is_lora(model) else None


@torch.no_grad()
def merged_state(model: nn.Module, full: dict) -> dict:
    """A full state dict of a LoRA model (e.g. gathered from shards) with W + delta in place of W and the adapter
    tensors dropped: the export a plain model loads."""
    cfg: LoRAConfig = model.lora_config
    out = {k: v for k, v in full.items() if ".lora_" not in k}
    for name in layers(model):
        A, B = full[f"{name}.lora_A"], full[f"{name}.lora_B"]
        w = out[f"{name}.weight"]
        out[f"{name}.weight"] = w + ((B.float() @ A.float()) * cfg.scale).to(w.dtype)
    return out
