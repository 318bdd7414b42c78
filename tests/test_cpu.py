"""r1kit's CPU kernels (engine/cpu.py, cpu_kernels.c) against torch, and the fallback where they cannot be built."""
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from r1kit.engine import cpu
from r1kit.engine.engine import Engine
from r1kit.engine.naive import greedy
from r1kit.engine.sampling import SamplingParams
from r1kit.model import ModelConfig, Transformer

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
        x = torch.randn(2, rows, 37, generator=g)[1]  # a non-contiguous batch is fine
        packed = cpu.pack(w)
        torch.testing.assert_close(cpu.linear(x, packed, b, 100), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cpu.linear(x[:, None], packed, None, 100), F.linear(x[:, None], w))
    finally:
        torch.set_num_threads(n)


def reference_attention(q, k, v, lengths, scale):
    out = []
    for b, n in enumerate(lengths.tolist()):
        kb, vb = k[b, :, :n], v[b, :, :n]  # (Hkv, n, D)
        rep = q.shape[1] // k.shape[1]
        kb, vb = kb.repeat_interleave(rep, 0), vb.repeat_interleave(rep, 0)
        out.append(F.scaled_dot_product_attention(q[b], kb, vb, scale=scale))
    return torch.stack(out)


@needs_kernels
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 4, 16), (9, 3, 64), (8, 2, 128)])
def test_decode_attention_matches_sdpa(heads, kv_heads, dim):
    g = torch.Generator().manual_seed(dim)
    B, S = 5, 70
    k, v = torch.randn(B, kv_heads, S, dim, generator=g) * 3, torch.randn(B, kv_heads, S, dim, generator=g)
    q = torch.randn(B, heads, 1, dim, generator=g) * 3  # large scores: the softmax's exp is tested over a wide range
    lengths = torch.tensor([1, 16, 17, 45, 70])
    y = cpu.decode_attention(q, k, v, lengths, dim ** -0.5)
    torch.testing.assert_close(y, reference_attention(q, k, v, lengths, dim ** -0.5), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_build_goes_to_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lib = cpu.kernels.__wrapped__()
    assert lib is not None and lib.r1k_block() == 24
    assert [p.suffix for p in (tmp_path / "r1kit" / "kernels").iterdir()] == [".so"]  # no temporary file left


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to compare with")
def test_a_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.warns(UserWarning, match="could not build its CPU kernels"):
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
