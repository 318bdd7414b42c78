"""Block-wise FP8 (docs/ARCHITECTURE.md 6.1): round trip error bounds, exact e4m3 grid, sharded FP8 checkpoints."""
import json

import pytest
import torch
from safetensors.torch import save_file

from r1kit.checkpoint.fp8 import (FP8, FP8_MAX, dequantize_fp8_blocks, dequantize_state_dict, is_fp8_weight,
                                  quantize_fp8_blocks, quantize_state_dict, scale_getter)
from r1kit.checkpoint.hf import config_to_hf, hf_state_dict, load_model, to_hf_key
from r1kit.model import ModelConfig, Transformer


@pytest.fixture(autouse=True)
def _one_thread():  # small shared test machine: avoid thread oversubscription
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("shape,scale_shape", [((576, 7168), (5, 56)), ((2048, 7168), (16, 56))])
def test_round_trip_error_bounds(shape, scale_shape):
    w = (torch.randn(shape) * torch.rand(shape[0], 1) * 0.05).to(torch.bfloat16)
    q, s = quantize_fp8_blocks(w)
    assert q.dtype == FP8 and q.shape == shape and s.dtype == torch.float32 and s.shape == scale_shape
    back = dequantize_fp8_blocks(q, s, torch.float32)
    wf = w.float()
    se = s.repeat_interleave(128, 0)[:shape[0]].repeat_interleave(128, 1)[:, :shape[1]]  # per-element scale
    normal = (wf / se).abs() >= 2 ** -6  # e4m3 min normal 2^-6: 3 mantissa bits -> half-ulp 2^-4 relative
    err = (back - wf).abs()
    tol = 1 + 1e-5  # exact ties (w/s halfway between grid points) meet the bound up to fp32 rounding
    assert (err[normal] <= 2 ** -4 * wf.abs()[normal] * tol).all()
    assert (err[~normal] <= 2 ** -10 * se[~normal] * tol).all()  # subnormal step 2^-9 * s
    assert normal.float().mean() > 0.9 and (~normal).any()
    # scale_inv = block amax / 448 (576 rows: the last row block has 64 real rows; padding does not count)
    assert s[-1, 0].item() == pytest.approx(wf[(scale_shape[0] - 1) * 128:, :128].abs().max().item() / 448)


def test_e4m3_grid_reproduces_exactly():
    torch.manual_seed(1)
    q0 = torch.randint(0, 256, (300, 260), dtype=torch.uint8)
    q0[(q0 & 0x7F) == 0x7F] = 0  # drop the NaN codes
    q0 = q0.view(FP8)
    q0[::128, ::128] = FP8_MAX  # every block reaches 448, so its scale is exactly the chosen power of two
    s = 2.0 ** torch.randint(-12, 4, (3, 3)).float()
    w = dequantize_fp8_blocks(q0, s, torch.float32)
    q, s2 = quantize_fp8_blocks(w)
    assert torch.equal(s2, s) and torch.equal(q.view(torch.uint8), q0.view(torch.uint8))
    assert torch.equal(dequantize_fp8_blocks(q, s2, torch.float32), w)


def test_non_aligned_edges_and_zero_block():
    w = torch.randn(130, 200)
    w[128:, 128:] = 0
    q, s = quantize_fp8_blocks(w)
    assert s.shape == (2, 2) and s[1, 1] == 1.0  # an all-zero block gets scale 1, not 0/0
    assert s[1, 0].item() == pytest.approx(w[128:, :128].abs().max().item() / 448)
    with pytest.raises(ValueError):
        dequantize_fp8_blocks(q, s[:, :1])


def test_never_fp8_names():
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight", "model.layers.3.self_attn.kv_a_layernorm.weight",
                 "model.layers.3.mlp.gate.weight", "model.layers.3.mlp.gate.e_score_correction_bias",
                 "model.layers.61.eh_proj.weight", "model.layers.61.shared_head.head.weight",
                 "model.layers.61.embed_tokens.weight", "model.layers.61.enorm.weight"):
        assert not is_fp8_weight(name), name
    for name in ("model.layers.3.self_attn.kv_a_proj_with_mqa.weight", "model.layers.3.mlp.experts.5.gate_proj.weight",
                 "model.layers.3.mlp.shared_experts.down_proj.weight", "model.layers.0.mlp.up_proj.weight",
                 "model.layers.61.self_attn.o_proj.weight"):
        assert is_fp8_weight(name), name


def test_dequantize_state_dict_cross_shard_scale():
    a, b = torch.randn(256, 128), torch.randn(64, 64)
    qa, sa = quantize_fp8_blocks(a)
    qb, sb = quantize_fp8_blocks(b)
    norm = torch.ones(64)
    shard = {"x.a.weight": qa, "x.b.weight": qb, "x.b.weight_scale_inv": sb, "x.norm.weight": norm}
    other = {"x.a.weight_scale_inv": sa}
    out = dequantize_state_dict(shard, other.__getitem__, torch.float32)
    assert set(out) == {"x.a.weight", "x.b.weight", "x.norm.weight"}
    assert out["x.norm.weight"] is norm
    assert torch.equal(out["x.a.weight"], dequantize_fp8_blocks(qa, sa, torch.float32))
    assert out["x.b.weight"].dtype == torch.float32
    assert dequantize_state_dict(shard, other)["x.a.weight"].dtype == torch.bfloat16  # default: the reference's
    with pytest.raises(KeyError, match="x.a.weight_scale_inv"):
        dequantize_state_dict(shard, {})


def test_tiny_fp8_checkpoint_two_shards_loads(tmp_path):
    cfg = ModelConfig.from_name("tiny-moe")
    model = Transformer(cfg).eval()
    tensors = quantize_state_dict(hf_state_dict(model))
    fp8_names = [k for k, v in tensors.items() if v.dtype == FP8]
    assert "model.layers.1.mlp.experts.0.down_proj.weight" in fp8_names
    assert tensors["model.layers.1.mlp.gate.weight"].dtype == torch.float32
    assert tensors["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert tensors["model.layers.3.eh_proj.weight"].dtype == torch.float32
    # shard 1 gets the first half of the keys; one weight's scale moves to the other shard and vice versa
    keys = list(tensors)
    one, two = set(keys[: len(keys) // 2]), set(keys[len(keys) // 2:])
    w1, w2 = fp8_names[0], fp8_names[-1]
    for w, src, dst in ((w1, one, two), (w2, two, one)):
        assert w in src
        src.discard(w + "_scale_inv")
        dst.add(w + "_scale_inv")
    weight_map = {}
    for i, part in enumerate((one, two)):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k].detach().clone() for k in part}, str(tmp_path / name))  # clone: unshare copies
        weight_map |= dict.fromkeys(part, name)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    hf_cfg = config_to_hf(cfg, torch.bfloat16) | {"quantization_config": {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}}
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
    assert scale_getter(tmp_path)(w1 + "_scale_inv").shape == tensors[w1 + "_scale_inv"].shape

    loaded = load_model(tmp_path)
    want = dequantize_state_dict(tensors, None)  # the reference's bf16 dequantisation
    for name, t in loaded.state_dict().items():
        key = to_hf_key(name, cfg)
        assert torch.equal(t, want[key].to(t.dtype)), name
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        rel = ((loaded(ids) - model(ids)).norm() / model(ids).norm()).item()
    assert rel < 0.2  # FP8 weights (~3% error each, a few routing flips): near, not equal to, the original
