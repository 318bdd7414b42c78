"""Time the demo base's pretraining steps (r1kit.sft.train on the `make demo` corpus) with the batch's rows
regrouped by their opening tokens, so the R1-Zero template's ~120-token prompt runs once per batch, against the
plain micro-batches that pad every row to the longest.

    .venv/bin/python bench/pretrain_step.py [--steps 40] [--threads 2]

Each arm runs in a child process on the same corpus, model init and batches; the first loss must agree (the
regrouping is exact: tests/test_grpo.py). The last output line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def arm(grouped: bool, steps: int) -> dict:
    import dataclasses

    import torch

    from r1kit.model import ModelConfig, Transformer
    from r1kit.pipeline.base import build_corpus
    from r1kit.rl import zero as z
    from r1kit.sft import SFTConfig, train
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer
    from r1kit.train import batching

    if not grouped:  # every row in order, as before the regrouping
        batching.prefix_micro_batches = lambda ids, lengths, budget, **kw: batching.micro_batches(lengths, budget)
    cfg = dataclasses.replace(z.demo_base("arith", z.DEMO_TASKS["arith"], steps, seed=1), steps=steps)
    tok, examples, _ = build_corpus(get_task("arith", "train", **cfg.task_kw), cfg, Tokenizer.train_bpe)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-moe").replace(vocab_size=tok.vocab_size, bos_id=tok.bos_id,
                                                                  eos_id=tok.eos_id))
    t0 = time.perf_counter()
    losses = train(model, examples, SFTConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=50,
                                              seed=cfg.seed, mtp_weight=cfg.mtp_weight))
    return {"s_per_step": (time.perf_counter() - t0) / steps, "first_loss": losses[0], "last_loss": losses[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arm", choices=["grouped", "plain"], help=argparse.SUPPRESS)  # the child's job
    args = ap.parse_args()
    if args.arm:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(arm(args.arm == "grouped", args.steps)))
        return
    res = {}
    for name in ("plain", "grouped"):
        out = subprocess.run([sys.executable, __file__, "--arm", name, "--steps", str(args.steps), "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True).stdout
        res[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:8s} {res[name]['s_per_step']:.3f} s/step, first loss {res[name]['first_loss']:.5f}")
    speedup = res["plain"]["s_per_step"] / res["grouped"]["s_per_step"]
    print(f"speed-up {speedup:.2f}x")
    print(json.dumps({"bench": "pretrain_step", "steps": args.steps, "threads": args.threads, **res,
                      "speedup": speedup}))


if __name__ == "__main__":
    main()
