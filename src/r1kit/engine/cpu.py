"""CPU fp32 inference: r1kit's decode kernels, swapped into the model during engine steps.

A CPU decode step is a stack of skinny matmuls (a few batch rows times each weight) and hundreds of small ops, and
PyTorch's default paths run the matmuls at a third of the machine's fp32 peak. During engine steps r1kit runs them
on its own AVX-512 kernels (cpu_kernels.c, compiled once per machine with the system C compiler, loaded with
ctypes): a GEMM for few rows (SmolLM2-135M's Linears at 16 rows: 25 ms a step, against 32 ms on oneDNN's prepacked
GEMM and 118 ms through `F.linear`, 2 Zen 4 cores), RMSNorm, SwiGLU as the epilogue of the fused gate|up GEMM, and a
dense model's whole decode attention per layer (RoPE, the cache write, attention over each row's own length) in one
call. Where the kernels cannot be built or run (no AVX-512, no C compiler, not Linux) the Linears fall back to
oneDNN's prepacked layout (what inductor's CPU `freezing` uses) and the rest to the model's own torch code.
Projections that read the same input are fused into one matmul (q/k/v of `Attention.qkv`, gate/up of `MLP`).

The model is never modified for good (it stays the trainable model the RL loop updates): `Patches.active()` swaps
the forwards only for the duration of an engine step, and a packed weight is rebuilt whenever the version counter of
a part moves (an optimiser step updates weights in place), so packed copies are never stale. Cost: one packed copy
of the Linear weights.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shlex
import subprocess
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

_SRC = Path(__file__).with_name("cpu_kernels.c")
_FLAGS = ["-O3", "-mavx512f", "-mfma", "-fopenmp", "-fPIC"]  # compile flags


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h
_mmap_threshold: int | None = None  # what r1kit last set (None: glibc's own dynamic threshold)


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks of up to 32 MB in the process instead of unmapping them.

    A decode step allocates and frees the same few MB every step (SmolLM2 at 16 rows: 3 MB logits and their
    softmax). With glibc's defaults those blocks go back to the kernel and come back as fresh zeroed pages, and the
    page faults cost more than the arithmetic: sampling 16 x 49k took 2.8 ms instead of 0.8. This is what
    jemalloc/tcmalloc preloading (Intel's advice for PyTorch on CPU) buys, without a preload. Process-wide: the
    process may hold up to 512 MB of freed memory. Returns False where it does not apply (not glibc)."""
    global _mmap_threshold
    ok = _mallopt(_M_MMAP_THRESHOLD, 32 << 20) and _mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    if ok:
        _mmap_threshold = 32 << 20
    return ok


@contextmanager
def large_blocks_to_the_kernel(threshold: int = 1 << 20):
    """For a training pass: every block of `threshold` bytes or more is mmapped and goes back to the kernel when
    freed. Activations come and go in sizes that change with every micro-batch and layer; kept on malloc's heap
    they fragment it, and a SmolLM2 GRPO pass (16 x 1,324 tokens) peaked at 9.2 GB of RSS instead of 3.1 GB
    (measured, docs/BENCHMARKS.md). The decode setting (keep_freed_memory) is restored afterwards."""
    changed = _mallopt(_M_MMAP_THRESHOLD, threshold)
    try:
        yield changed
    finally:
        if changed and _mmap_threshold is not None:
            _mallopt(_M_MMAP_THRESHOLD, _mmap_threshold)


def _openmp_runtime() -> str | None:
    """The file of the OpenMP runtime torch has loaded (pip wheels bring their own copy of libgomp)."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "/" in line})
    found = [p for p in paths if re.search(r"/lib(gomp|iomp5|omp)[-.\w]*\.so", p)]
    torch_dir = str(Path(torch.__file__).parent)
    return next((p for p in found if p.startswith(torch_dir)), found[0] if found else None)


@functools.cache  # once per process; the build once per machine (and source, compiler and OpenMP runtime)
def kernels() -> ctypes.CDLL | None:
    """cpu_kernels.c compiled into the user's cache (~/.cache/r1kit/kernels) and loaded, or None where it cannot run
    here: not Linux on x86-64 with AVX-512, or no working C compiler ($CC, default `cc`; the warning says why).
    It is linked against torch's own OpenMP runtime, so the two share one thread pool (two runtimes would each keep
    threads spinning on the same cores)."""
    if sys.platform != "linux" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    cc = shlex.split(os.environ.get("CC") or "cc")
    try:
        omp = _openmp_runtime()
        link = [omp, f"-Wl,-rpath,{Path(omp).parent}"] if omp else ["-fopenmp"]
        digest = hashlib.sha256(_SRC.read_bytes() + " ".join([*cc, *_FLAGS, *link]).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "r1kit" / "kernels"
        lib = cache / f"cpu_kernels-{digest}.so"
        if not lib.exists():
            # built under a name of its own, then renamed: concurrent builds never see half a file
            tmp = lib.with_name(f"{lib.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            obj = tmp.with_suffix(".o")
            try:
                cache.mkdir(parents=True, exist_ok=True)
                for cmd in ([*cc, *_FLAGS, "-c", str(_SRC), "-o", str(obj)],
                            [*cc, "-shared", str(obj), *link, "-lm", "-o", str(tmp)]):
                    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
                os.replace(tmp, lib)
            finally:
                tmp.unlink(missing_ok=True)
                obj.unlink(missing_ok=True)
        so = ctypes.CDLL(str(lib))
    except Exception as e:  # noqa: BLE001 - any failure here means: run without the kernels, and say why
        err = getattr(e, "stderr", None)
        why = (err.decode(errors="replace") if isinstance(err, bytes) else err or str(e)).strip().splitlines()[-1:]
        warnings.warn(f"r1kit: could not build or load its CPU kernels with {' '.join(cc)!r} ({' '.join(why)}); "
                      f"CPU decoding falls back to oneDNN and torch ops, ~1.5x slower at 16 rows", stacklevel=2)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    so.r1k_block.argtypes = []
    so.r1k_linear.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, ctypes.c_int, ctypes.c_int]
    so.r1k_linear.restype = ctypes.c_int
    f32 = ctypes.c_float
    so.r1k_rmsnorm.argtypes = [ptr, ptr, ptr, i64, i64, f32]
    so.r1k_rmsnorm.restype = None
    so.r1k_decode_attention.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, f32, ctypes.c_int]
    so.r1k_decode_attention.restype = ctypes.c_int
    return so


def available() -> bool:
    return kernels() is not None or (torch.backends.mkldnn.is_available()
                                     and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _check(*ts: torch.Tensor) -> None:
    """The kernels read raw fp32 CPU memory: anything else must not reach them."""
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in ts):
        raise ValueError(f"r1kit's CPU kernels take fp32 CPU tensors, got {[(t.dtype, t.device.type) for t in ts]}")


def _blocks(w: torch.Tensor, per: int) -> torch.Tensor:
    """(N, K) -> (ceil(N/per), per, K), zero-padded."""
    n, k = w.shape
    blocks = -(-n // per)
    return F.pad(w, (0, 0, 0, blocks * per - n)).view(blocks, per, k)


def pack(w: torch.Tensor) -> torch.Tensor:
    """(N, K) fp32 weight -> the kernel's layout (ceil(N/NB), K, NB), zero-padded."""
    return _blocks(w, kernels().r1k_block()).transpose(1, 2).contiguous()


def pack_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gate and up weights (I, K) -> blocks of NB/2 gate features then the same NB/2 up features."""
    half = kernels().r1k_block() // 2
    return torch.cat((_blocks(gate, half), _blocks(up, half)), 1).transpose(1, 2).contiguous()


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int,
           swiglu: bool = False) -> torch.Tensor:
    """x (..., K) @ W.T + bias with W from `pack`; or, with swiglu and W from `pack_swiglu`, silu(x @ Wg.T) *
    (x @ Wu.T). fp32 on CPU."""
    _check(x, packed)
    if swiglu and bias is not None:
        raise ValueError("a SwiGLU bias would have to be added before the activation; r1k_linear has none")
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.empty(x2.shape[0], out_features, dtype=x.dtype)
    if kernels().r1k_linear(x2.data_ptr(), x2.shape[0], x2.shape[1], packed.data_ptr(), out_features,
                            None if bias is None else bias.data_ptr(), y.data_ptr(), swiglu, torch.get_num_threads()):
        raise MemoryError("r1k_linear: no memory for its scratch")
    return y.view(*x.shape[:-1], out_features)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check(x, weight)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.empty_like(x2)
    kernels().r1k_rmsnorm(x2.data_ptr(), weight.data_ptr(), y.data_ptr(), x2.shape[0], x2.shape[1], eps)
    return y.view(x.shape)


def decode_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     lengths: torch.Tensor, n_heads: int, scale: float) -> torch.Tensor:
    """One decode step's attention from the fused projection qkv (B, 1, (H + 2 Hkv) D) with RoPE cos, sin (B, 1, D/2):
    writes k, v at position lengths[b] - 1 of the cache rows k, v (B, Hkv, S, D) (contiguous), and attends row b
    over its first lengths[b] positions -> (B, 1, H D). D a multiple of 16 up to 256 (`attention_fits`)."""
    _check(qkv, cos, sin, k, v)
    if not (k.is_contiguous() and v.is_contiguous() and lengths.dtype == torch.int64):
        raise ValueError("decode_attention: the cache rows must be contiguous and lengths int64")
    B, D = qkv.shape[0], k.shape[-1]
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    y = torch.empty(B, 1, n_heads * D, dtype=qkv.dtype)
    if kernels().r1k_decode_attention(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), k.data_ptr(), v.data_ptr(),
                                      y.data_ptr(), lengths.data_ptr(), B, n_heads, k.shape[1], k.shape[2], D, scale,
                                      torch.get_num_threads()):
        raise MemoryError("r1k_decode_attention: no memory for its scratch")
    return y


def attention_fits(head_dim: int) -> bool:
    return kernels() is not None and head_dim % 16 == 0 and head_dim <= 256


class Patches:
    """The forwards an engine step swaps into the model on CPU: packed Linears (fused q|k|v and gate|up), and with
    r1kit's kernels RMSNorm, SwiGLU and a dense model's whole decode attention (RoPE, cache write, attention)."""

    def __init__(self, model: nn.Module, batch_hint: int = 16):
        from r1kit.model.model import MLP, Attention, RMSNorm

        self.own = kernels() is not None
        self.batch_hint = batch_hint  # rows oneDNN's blocked layout is tuned for; any row count works
        self.packed: dict[tuple[nn.Linear, ...], tuple] = {}  # parts -> (version key, packed weight, bias)
        self.patches: dict[tuple[nn.Module, str], object] = {}  # (module, method name) -> replacement
        fused: set[nn.Linear] = set()
        for m in model.modules():
            if isinstance(m, Attention):
                qkv = self._linear(m.q_proj, m.k_proj, m.v_proj)
                self.patches[m, "qkv"] = self._split(qkv)
                if self.own and attention_fits(m.hd):
                    self.patches[m, "forward"] = self._attention(m, qkv)
                fused |= {m.q_proj, m.k_proj, m.v_proj}
            elif isinstance(m, MLP):
                self.patches[m, "forward"] = self._mlp(m)
                fused |= {m.gate_proj, m.up_proj}
            elif isinstance(m, RMSNorm) and self.own:
                self.patches[m, "forward"] = self._rmsnorm(m)
        for m in model.modules():
            if isinstance(m, nn.Linear) and m not in fused:
                self.patches[m, "forward"] = self._linear(m)

    def _linear(self, *parts: nn.Linear, swiglu: bool = False):
        """x -> x @ cat(weights).T + cat(biases) (with swiglu: silu(x @ gate.T) * (x @ up.T)), on a packed copy
        rebuilt when any part changes."""
        out_features = parts[0].out_features if swiglu else sum(p.out_features for p in parts)

        def forward(x: torch.Tensor) -> torch.Tensor:
            key = tuple((t._version, t.data_ptr()) for p in parts for t in (p.weight, p.bias) if t is not None)
            entry = self.packed.get(parts)
            if entry is None or entry[0] != key:
                ws = [p.weight.detach() for p in parts]
                b = torch.cat([p.bias.detach() for p in parts]) if parts[0].bias is not None else None
                if swiglu:
                    w = pack_swiglu(*ws)
                elif self.own:
                    w = pack(torch.cat(ws))
                else:
                    w = torch.ops.mkldnn._reorder_linear_weight(torch.cat(ws), self.batch_hint)
                entry = self.packed[parts] = (key, w, b)
            if self.own:
                return linear(x, entry[1], entry[2], out_features, swiglu)
            return torch.ops.mkldnn._linear_pointwise(x, entry[1], entry[2], "none", [], "")
        forward.sizes = [p.out_features for p in parts]
        return forward

    @staticmethod
    def _split(fused):
        return lambda x: fused(x).split(fused.sizes, dim=-1)

    def _mlp(self, m: nn.Module):
        gate_up = self._linear(m.gate_proj, m.up_proj, swiglu=self.own)
        if self.own:
            return lambda x: m.down_proj(gate_up(x))

        def forward(x: torch.Tensor) -> torch.Tensor:
            g, u = gate_up(x).split(gate_up.sizes, dim=-1)
            return m.down_proj(F.silu(g) * u)
        return forward

    @staticmethod
    def _rmsnorm(m: nn.Module):
        return lambda x: rmsnorm(x, m.weight, m.eps)

    @staticmethod
    def _attention(m: nn.Module, qkv):
        own_forward = type(m).forward.__get__(m)  # the model's, for prefill (it calls the patched m.qkv)

        def forward(x, rope, cache=None, attn_mask=None):
            lengths = getattr(cache, "lengths", None)  # set by the engine's cache for a CPU decode step
            if lengths is None:
                return own_forward(x, rope, cache, attn_mask)
            k, v = (stream[m.layer_idx][cache.rows] for stream in cache.streams)
            y = decode_attention(qkv(x), *rope, k, v, lengths, m.n_heads, m.scale)  # (B, 1, H hd)
            return m.o_proj(y)
        return forward

    @contextmanager
    def active(self):
        for (m, name), f in self.patches.items():
            setattr(m, name, f)  # an instance attribute shadows the class's method
        try:
            yield
        finally:
            for m, name in self.patches:
                delattr(m, name)
