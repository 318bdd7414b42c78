"""Time one tiny-moe training step (forward + backward + AdamW + bias update) against a dense model with the same
activated parameter count, on CPU.

    .venv/bin/python bench/moe_step.py [--batch 16] [--seq 128] [--steps 20] [--warmup 3] [--threads 0]

The dense twin keeps tiny-moe's MLA attention, embedding and head and replaces every FFN by one SwiGLU whose width
makes `count_params(...).activated` match. The last output line is one JSON object with the figures; the target is
ratio = moe_ms / dense_ms <= 2.0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from r1kit.model import ModelConfig, Transformer, count_params
from r1kit.model.deepseek import update_moe_bias


def dense_twin(moe: ModelConfig) -> ModelConfig:
    """Same model with dense FFNs everywhere, inter_dim chosen so the activated counts agree (to one width unit)."""
    base = moe.replace(n_routed_experts=0, n_shared_experts=0, n_activated_experts=0, moe_inter_dim=0,
                       first_k_dense=0, n_group=1, topk_group=1, inter_dim=1)
    gap = count_params(moe).activated - count_params(base).activated  # activated FFN params still to place
    return base.replace(inter_dim=1 + round(gap / (3 * moe.dim * moe.n_layers)))


def time_steps(cfg: ModelConfig, batch: int, seq: int, steps: int, warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.moe:
            update_moe_bias(model, 1e-3)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    moe = ModelConfig.from_name("tiny-moe").replace(n_mtp=0)  # MTP is optional; compare the main models
    dense = dense_twin(moe)
    pm, pd = count_params(moe), count_params(dense)
    print(f"tiny-moe: {pm.total:,} params, {pm.activated:,} activated | dense twin (inter_dim {dense.inter_dim}): "
          f"{pd.total:,} params, {pd.activated:,} activated | B={args.batch} T={args.seq} "
          f"threads={torch.get_num_threads()}")
    res = {}
    for name, cfg in (("moe", moe), ("dense", dense)):
        t = time_steps(cfg, args.batch, args.seq, args.steps, args.warmup)
        res[name] = statistics.median(t) * 1e3
        print(f"{name:>5}: median {res[name]:.1f} ms/step (min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f}, "
              f"{args.steps} steps after {args.warmup} warm-up)")
    ratio = res["moe"] / res["dense"]
    print(f"ratio moe/dense = {ratio:.2f} (target <= 2.0)")
    print(json.dumps({"bench": "moe_step", "moe_ms": round(res["moe"], 2), "dense_ms": round(res["dense"], 2),
                      "ratio": round(ratio, 3), "moe_activated": pm.activated, "dense_activated": pd.activated,
                      "moe_total": pm.total, "batch": args.batch, "seq": args.seq, "steps": args.steps,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    main(p.parse_args())
