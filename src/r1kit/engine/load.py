"""Resolve a model spec for inference: an HF checkpoint folder, a GGUF file, or a named preset.

    model, tok = load_for_inference(".cache/smollm2")          # folder: config.json + safetensors + tokenizer.json
    model, tok = load_for_inference("SmolLM2.Q4_1.gguf")       # GGUF: dequantised in memory, its own tokenizer
    model, tok = load_for_inference("tiny")                     # preset: RANDOM weights + the built-in tokenizer
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from r1kit.errors import R1kitError, file_error
from r1kit.model.config import PRESETS, ModelConfig
from r1kit.model.model import Transformer, rope_inv_freq
from r1kit.tokenizer import Tokenizer


def spec_kind(spec: str) -> str:
    """"gguf", "folder" or "preset"; raises R1kitError for anything else."""
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise file_error(path, "file not found")
        return "gguf"
    if path.is_dir():
        return "folder"
    try:
        ModelConfig.from_name(spec)
    except ValueError:
        raise R1kitError(f"{spec}: not a checkpoint folder, a .gguf file or a preset "
                         f"(presets: {', '.join(sorted(PRESETS))})") from None
    return "preset"


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """CUDA + bf16 when there is a GPU, else CPU + fp32 (CPU bf16 matmuls are slow on most machines). A device the
    user names is tried once here, so "cuda" on a CPU-only torch is a one-line error, not a traceback later."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # torch raises AssertionError when built without CUDA
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise R1kitError(f"device {name!r} is not usable with this torch ({torch.__version__}, {build}): "
                         f"{reason}") from None
    return device, dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def _from_hf_state_dict(cfg: ModelConfig, state_dict: dict, source) -> Transformer:
    """A model from HF-keyed tensors, built on the meta device so no memory is spent on a random init."""
    from r1kit.checkpoint.hf import from_hf_key

    with torch.device("meta"):
        model = Transformer(cfg)
    sd = {name: t for k, t in state_dict.items() if (name := from_hf_key(k, cfg)) is not None}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise file_error(source, f"weights do not match the config (missing {missing[:1]}, unexpected "
                                 f"{unexpected[:1]})")
    model.inv_freq = rope_inv_freq(cfg, model.inv_freq.numel() * 2)[0]
    return model


def load_for_inference(spec: str, dtype: torch.dtype | None = None, device=None) -> tuple[Transformer, Tokenizer]:
    """(model in eval mode on device/dtype, tokenizer) for a folder, a .gguf file or a preset name.

    A preset has no weights: it is randomly initialised (seed 0, so runs repeat) and paired with the built-in
    character tokenizer; a UserWarning says so."""
    device, dtype = default_device_dtype(device, dtype)
    kind = spec_kind(spec)
    if kind == "folder":
        from r1kit.checkpoint.hf import load_model

        folder = Path(spec)
        if not (folder / "tokenizer.json").is_file():
            raise file_error(folder, "no tokenizer.json beside the weights")
        return load_model(folder, dtype=dtype, device=device), Tokenizer.from_file(folder)
    if kind == "gguf":
        from r1kit.checkpoint.gguf import read_gguf

        ck = read_gguf(spec)
        model = _from_hf_state_dict(ck.config, ck.state_dict, spec).to(device=device, dtype=dtype)
        tok = Tokenizer(ck.tokenizer, ck.bos_token, ck.eos_token, ck.chat_template, ck.add_bos)
        return model.eval(), tok
    cfg = ModelConfig.from_name(spec)
    tok = Tokenizer.builtin()
    if cfg.vocab_size < tok.vocab_size:
        raise R1kitError(f"preset {spec} has {cfg.vocab_size} ids, fewer than the built-in tokenizer's "
                         f"{tok.vocab_size}")
    warnings.warn(f"{spec} is a preset: RANDOM weights and the built-in character tokenizer, so the output is "
                  f"noise (give a checkpoint folder or a .gguf file for a real model)", stacklevel=2)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = Transformer(cfg)
    return model.to(dtype).eval(), tok


def load_for_command(spec: str, device: str | None = None, threads: int | None = None,
                     announce=print) -> tuple[Transformer, Tokenizer]:
    """What every model-running command (`generate`, `chat`, `serve`) does first: check the device, set torch's
    CPU threads, say in one line when the model is a preset with random weights, and load it.

    `announce` prints that line (each command picks its stream or console); the library's UserWarning about it is
    silenced, since the command has just said the same thing in its own words."""
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise R1kitError(f"unknown device {device!r}; expected cpu or cuda") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise R1kitError(f"device {device}: this torch build has no usable CUDA device; use --device cpu")
        if dev.type not in ("cpu", "cuda"):
            raise R1kitError(f"unsupported device {device!r}; expected cpu or cuda")
    if threads is not None:
        if threads < 1:
            raise R1kitError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if spec_kind(spec) == "preset":
        announce(f"warning: {spec} is a preset: RANDOM weights and the built-in character tokenizer, so its text is "
                 f"noise. Give a checkpoint folder or a .gguf file for a real model.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_for_inference(spec, device=device)
