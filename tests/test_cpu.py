"""r1kit's CPU kernels (engine/cpu.py, cpu_kernels.c) against torch, and the fallback where they cannot be built."""
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from r1kit.engine import cpu
from r1kit.engine.engine import Engine
from r1kit.engine.naive import greedy
from r1kit.engine.sampling import SamplingParams
from r1kit.model import ModelConfig, Transformer
from r1kit.model.model import RMSNorm, apply_rope, rope_cos_sin

needs_kernels = pytest.mark.skipif(cpu.kernels() is None, reason="r1kit's CPU kernels need Linux, AVX-512 and cc")


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16, 17, 40])
def test_linear_matches_torch(rows, threads):
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(rows)
        w, b = torch.randn(100, 37, generator=g), torch.randn(100, generator=g)  # 100 outputs: a partial last block
        x = torch.randn(rows, 74, generator=g)[:, ::2]  # a non-contiguous batch is fine
        packed = cpu.pack(w)
        torch.testing.assert_close(cpu.linear(x, packed, b, 100), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cpu.linear(x[:, None], packed, None, 100), F.linear(x[:, None], w))
    finally:
        torch.set_num_threads(n)


@needs_kernels
def test_swiglu_linear_matches_torch():
    g = torch.Generator().manual_seed(0)
    gate, up = torch.randn(30, 20, generator=g), torch.randn(30, 20, generator=g)  # 30: a partial last block
    for rows in (3, 16, 21):
        x = torch.randn(rows, 20, generator=g) * 4  # gates far into silu's flat left tail too
        y = cpu.linear(x, cpu.pack_swiglu(gate, up), None, 30, swiglu=True)
        torch.testing.assert_close(y, F.silu(x @ gate.T) * (x @ up.T), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_rmsnorm_matches_the_model():
    norm = RMSNorm(40, 1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 40)
    torch.testing.assert_close(cpu.rmsnorm(x, norm.weight.detach(), norm.eps), norm(x).detach())


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 4, 16), (9, 3, 64), (8, 2, 128), (4, 1, 256)])
def test_decode_attention_matches_the_model(heads, kv_heads, dim):
    """RoPE, the cache write at each row's last position and attention over each row's own length, against the
    model's apply_rope and SDPA."""
    g = torch.Generator().manual_seed(dim)
    B, S = 5, 70
    cache_k, cache_v = torch.randn(B, kv_heads, S, dim, generator=g) * 3, torch.randn(B, kv_heads, S, dim, generator=g)
    qkv = torch.randn(B, 1, (heads + 2 * kv_heads) * dim, generator=g) * 3  # large scores: exp over a wide range
    lengths = torch.tensor([1, 16, 17, 45, 70])
    cos, sin = rope_cos_sin(torch.rand(dim // 2) * 0.5, 1.0, (lengths - 1)[:, None], torch.float32)  # (B, 1, D/2)
    q, k, v = qkv.view(B, 1, heads + 2 * kv_heads, dim).transpose(1, 2).split([heads, kv_heads, kv_heads], 1)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H or Hkv, 1, D)
    want_k, want_v = cache_k.clone(), cache_v.clone()
    want = []
    for b, n in enumerate(lengths.tolist()):
        want_k[b, :, n - 1], want_v[b, :, n - 1] = k[b, :, 0], v[b, :, 0]
        kb, vb = (t[b, :, :n].repeat_interleave(heads // kv_heads, 0) for t in (want_k, want_v))
        want.append(F.scaled_dot_product_attention(q[b], kb, vb, scale=dim ** -0.5).reshape(1, heads * dim))
    y = cpu.decode_attention(qkv, cos, sin, cache_k, cache_v, lengths, heads, dim ** -0.5)
    torch.testing.assert_close(y, torch.stack(want), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache_k, want_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(cache_v, want_v)


@needs_kernels
def test_nan_is_not_hidden():
    """A NaN (a diverged policy) must come out as NaN, not as a plausible number."""
    qkv = torch.randn(2, 1, 6 * 16)
    qkv[0, 0, 0] = float("nan")  # row 0's first query head
    k, v = torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    cos, sin = torch.ones(2, 1, 8), torch.zeros(2, 1, 8)
    y = cpu.decode_attention(qkv, cos, sin, k, v, torch.tensor([8, 8]), 2, 0.25)
    assert y[0, 0, :16].isnan().all() and not y[1].isnan().any()
    gate = torch.randn(12, 8)
    x = torch.randn(2, 8)
    x[0, 3] = float("nan")
    h = cpu.linear(x, cpu.pack_swiglu(gate, torch.randn(12, 8)), None, 12, swiglu=True)
    assert h[0].isnan().all() and not h[1].isnan().any()


@needs_kernels
def test_only_fp32_cpu_tensors_reach_the_kernels():
    w = torch.randn(30, 20)
    with pytest.raises(ValueError, match="fp32 CPU"):
        cpu.linear(torch.randn(3, 20, dtype=torch.bfloat16), cpu.pack(w), None, 30)
    with pytest.raises(ValueError, match="CPU fp32 model"):
        Engine(Transformer(ModelConfig.from_name("tiny")).to(torch.bfloat16), pack_cpu_weights=True)


@needs_kernels
def test_build_goes_to_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    lib = cpu.kernels.__wrapped__()
    assert lib is not None and lib.r1k_block() == 24
    (built,) = (tmp_path / "a" / "r1kit" / "kernels").iterdir()  # no temporary file left
    assert built.suffix == ".so"
    # a damaged cache (here another cache dir: this process has the good one loaded): fall back, never raise
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    damaged = tmp_path / "b" / "r1kit" / "kernels" / built.name
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a shared library")
    with pytest.warns(UserWarning, match="could not build or load"):
        assert cpu.kernels.__wrapped__() is None


@pytest.mark.skipif(sys.platform != "linux", reason="the kernels are built on Linux only")
def test_a_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.warns(UserWarning, match="could not build or load its CPU kernels"):
        assert cpu.kernels.__wrapped__() is None


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2"])
def test_engine_without_kernels_is_exact(name, monkeypatch):
    """Where the kernels cannot run, the engine uses oneDNN's Linears and the model's attention, still exact."""
    monkeypatch.setattr(cpu, "kernels", lambda: None)
    torch.manual_seed(0)
    m = Transformer(ModelConfig.from_name(name)).eval()
    eng = Engine(m, max_batch=3)
    assert not eng.cache.per_row_kernel
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15] * 12]  # three lengths in one batch: masked decode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rs = eng.generate(prompts, SamplingParams(temperature=0, max_new_tokens=24))
    for p, r in zip(prompts, rs):
        assert r.token_ids == greedy(m, torch.tensor([p]), 24)
