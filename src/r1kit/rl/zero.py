"""R1-Zero end to end (`r1kit zero`, what `make demo` runs): pretrain or load a base, GRPO with rule rewards only,
held-out pass@1 before and after, and a run folder with metrics, TensorBoard events, checkpoints, report and plots.

On a 2-core CPU the tiny base is a DeepSeek-V3-architecture model (tiny-moe: MLA + MoE + MTP) pretrained on a
synthetic corpus where most R1-Zero-format solutions state a bare answer and a few check a first guess step by step
("wait, ..."); RL has to discover that checking pays. The same command trains a real checkpoint with
`--model PATH --task gsm8k`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch

from r1kit.errors import R1kitError
from r1kit.eval.heldout import EvalConfig
from r1kit.rl.grpo import GRPOConfig
from r1kit.train.lora import DEFAULT_TARGETS, LoRAConfig

# The demo task: left-to-right chains of 2 to 8 numbers (1 to 7 operations), "(((3+2)*4)+1)*2", operands 1-5, no
# step beyond 60.
# A tiny model learns short chains in its head but not long ones (the value is a polynomial of the operands); written
# out one operation at a time ("3+2=5 5*4=20 20+1=21 21*2=42") every step is easy, so thinking pays more the longer
# the question. The train split is large so the base cannot memorise its questions' answers.
DEMO_TASKS = {"arith": dict(n_terms=(2, 8), max_operand=5, ops="+*", nested=True, max_value=60, size=200_000)}


def demo_base(task: str, task_kw: dict, steps: int, seed: int, placebo: bool = False):
    """The tiny demo base (pipeline.base): a DeepSeek-V3-shaped tiny-moe (MLA + MoE + MTP) pretrained on a corpus
    where half the documents are chat-shaped worked solutions (where the skill is learnt) and half are R1-Zero-template
    documents. Of those, 20% ask "Show your working." and get the working as the answer; the rest are answered at
    once, except 11% (about 4.4% of all documents) that state a first value in the thought, then "wait, " and check
    it step by step, which fixes half of those values. Its prior to think and to reflect in the R1-Zero template
    come from that mix alone; RL has to find that checking pays (docs/BENCHMARKS.md, "Session 10")."""
    from r1kit.pipeline.base import BaseStageConfig

    return BaseStageConfig(task=task, task_kw=task_kw, preset="tiny-moe", vocab_size=384, chat_frac=0.5,
                           worked_frac=0.0, check_frac=0.11, asked_frac=0.2, placebo=placebo, steps=steps, seed=seed)


def _examples(task, n: int, rng: random.Random):
    idx = rng.sample(range(len(task)), min(n, len(task)))
    return [task[i] for i in idx]


# --------------------------------------------------------------------------------------------------------------

def run_zero(run_dir: str, model_path: str | None, task_name: str, task_kw: dict, gc: GRPOConfig, bc, ec: EvalConfig,
             resume: bool = False, ckpt_every: int = 10, keep_last: int = 2, eval_every: int = 5,
             lora_cfg: LoRAConfig | None = None, eval_task_kw: dict | None = None, log=print) -> dict:
    """The R1-Zero recipe on r1kit's one RL loop (rl.trainer) and its one evaluator (eval.heldout). `bc` is the
    pipeline.base.BaseStageConfig of the tiny base when there is no model_path.

    Every held-out point (the base at step 0, every `eval_every` steps, the end) samples the same problems with the
    same settings `ec`, so the curves compare like with like."""
    from r1kit.eval.heldout import evaluate_examples, held_out
    from r1kit.pipeline.base import build_base
    from r1kit.rewards import combine
    from r1kit.rl import report, trainer
    from r1kit.runs import prepare_run_dir
    from r1kit.tasks import get_task
    from r1kit.train import dist, lora

    t_start = time.time()
    d = dist.setup()  # under torchrun: rank 0 prepares, talks and writes; every rank trains its share
    if not d.main:
        log = lambda *a, **k: None  # noqa: E731
    problem = None
    if d.main:
        try:
            prepare_run_dir(run_dir, resume)
        except R1kitError as e:
            problem = str(e)
    problem = dist.broadcast_object(problem)  # every rank stops on rank 0's one line, none waits forever
    if problem:
        raise R1kitError(problem)
    run = Path(run_dir)
    if model_path:
        from r1kit.engine.load import load_for_inference
        policy, tok = load_for_inference(model_path, dtype=torch.float32)
    else:  # under torchrun every rank trains its share of the base; rank 0 writes the cache
        policy, tok = build_base(bc, log)
    template = tok.template
    if lora_cfg is not None and lora_cfg.rank:
        lora.apply(policy, lora_cfg)
    train_task = get_task(task_name, split="train", **task_kw)
    test_task = get_task(task_name, split="test", **(task_kw if eval_task_kw is None else eval_task_kw))
    held = held_out(test_task, ec.problems, 12345)
    points = {}  # step -> this run's held-out results

    def evaluate(step, engine, model):
        res = points[step] = evaluate_examples(model, tok, test_task, held, template, ec, engine=engine)
        if d.main:
            with (run / "samples.jsonl").open("a") as f:
                for row in res["samples"]:
                    f.write(json.dumps({"step": step} | row) + "\n")
        text = "\n\n".join(f"**{r['question']}** ({'right' if r['correct'] else 'wrong'})\n\n    {r['completion']}"
                             for r in res["samples"])
        return {"heldout_pass@1": res["pass@1"], "heldout_length": res["length"],
                "heldout_reflection_rate": res["reflection_rate"],
                "heldout_thought": 1 - res["split"]["no thought"]["share"], "text/heldout_samples": text}

    def setup(engine):
        before = evaluate(0, engine, engine.model)
        if d.main:
            meta = {"task": task_name, "task_kw": task_kw, "grpo": dataclasses.asdict(gc),
                    "base": dataclasses.asdict(bc) if not model_path else None, "eval": dataclasses.asdict(ec),
                    "lora": lora.config_dict(policy), "template": template, "world_size": d.world,
                    "model": model_path or "tiny demo base"}
            (run / "run.json").write_text(json.dumps(meta, indent=2))
        log(f"held-out before GRPO: pass@1 {before['heldout_pass@1']:.1%}, mean length "
            f"{before['heldout_length']:.1f} tokens, reflective words {before['heldout_reflection_rate']:.3f}")
        return {"before": points[0]}

    reward = combine(gc.rewards)
    result = trainer.train(
        policy, tok, train_task, gc, run, template=template,
        pick=lambda rng, n: _examples(train_task, n, rng), reward_for_step=lambda step: reward,
        evaluate=lambda step, engine: evaluate(step, engine, engine.model), eval_every=eval_every,
        eval_rows=ec.k, ckpt_every=ckpt_every, keep_last=keep_last, log=log, progress=True, setup=setup)
    before = result.extra["before"]
    after = points.get(gc.steps)
    if after is None:  # resumed past the last evaluation
        evaluate(gc.steps, result.engine, result.rollout_model)
        after = points[gc.steps]
    log(f"held-out after GRPO: pass@1 {after['pass@1']:.1%}, mean length {after['length']:.1f} tokens, "
        f"reflective words {after['reflection_rate']:.3f}")
    summary = {"before": before, "after": after, "steps": gc.steps, "seconds": time.time() - t_start}
    if d.main:
        if lora.is_lora(policy) and not d.on:
            lora.save_adapter(policy, run / "adapter", base=model_path or "")
        report.write(run, summary, result.rows)
        log(f"report: {run / 'report.md'}")
    return summary


def zero(run_dir: str = "runs/zero", model: str = "", task: str = "arith", data: str = "", eval_data: str = "",
         steps: int = 80, prompts_per_step: int = 16, group_size: int = 8, lr: float = 0.0, beta: float = 0.001,
         max_new_tokens: int = 80, base_steps: int = 3000, eval_problems: int = 200, seed: int = 0,
         resume: bool = False, ckpt_every: int = 10, mini_batches: int = 1, mu: int = 1,
         micro_batch_tokens: int = 8192, grad_checkpointing: str = "auto", lora_rank: int = 0, seeds: int = 1,
         eval_every: int = 4, placebo: bool = False,
         lora_alpha: float = 32.0, lora_targets: str = ",".join(DEFAULT_TARGETS)) -> None:
    """R1-Zero: GRPO with rule rewards (accuracy + format) on a base model, with held-out pass@1 before and after.

    Args:
        run_dir: run folder (metrics.jsonl, TensorBoard events, checkpoints, report.md, plots).
        model: an HF checkpoint folder or GGUF to train; empty = pretrain (or reuse) the tiny demo base.
        task: arith, arith-mix, countdown, gsm8k, math or jsonl.
        data: jsonl file for file-backed tasks (gsm8k, math, jsonl); 90% trains, a seeded 10% is held out.
        eval_data: held-out jsonl for file-backed tasks, instead of the 10% of --data.
        steps: GRPO steps.
        prompts_per_step: questions per step (B).
        group_size: samples per question (G, at least 2: advantages compare a sample with its group).
        lr: learning rate; 0 = 2e-4 for the tiny base, 3e-6 (the paper's) for a real model.
        beta: k3 KL coefficient.
        max_new_tokens: completion length limit.
        base_steps: pretraining steps of the tiny base.
        eval_problems: held-out problems for the before/after pass@1.
        seed: seed of data order, sampling and the tiny base.
        resume: continue the run in run_dir from its last checkpoint.
        ckpt_every: steps between checkpoints.
        mini_batches: optimiser steps per rollout batch (R1: 16); old log-probs come from the rollout policy.
        mu: passes over each rollout batch.
        micro_batch_tokens: padded tokens per forward/backward (gradients accumulate; 0 = the whole batch at once).
        grad_checkpointing: on, off or auto (on when activations would crowd memory).
        lora_rank: train LoRA adapters of this rank instead of every weight (0 = full fine-tune).
        lora_alpha: LoRA scale numerator (the update is alpha / rank * B A).
        lora_targets: comma-separated Linear names that get adapters.
        seeds: run the whole recipe (base included) for seeds seed .. seed+N-1 in RUN_DIR/seed-K, then write
            RUN_DIR/summary.json and summary.md with the mean and std of every headline figure.
        eval_every: steps between held-out evaluations (same problems, same settings as before and after).
        placebo: the control experiment: the demo base's "wait" checks never fix anything (docs/BENCHMARKS.md).
    """
    for name, value, low in (("steps", steps, 1), ("prompts_per_step", prompts_per_step, 1),
                             ("group_size", group_size, 2), ("max_new_tokens", max_new_tokens, 1),
                             ("eval_problems", eval_problems, 1), ("ckpt_every", ckpt_every, 1),
                             ("mini_batches", mini_batches, 1), ("mu", mu, 1), ("lora_rank", lora_rank, 0),
                             ("micro_batch_tokens", micro_batch_tokens, 0),
                             ("seeds", seeds, 1), ("eval_every", eval_every, 1)):
        if value < low:
            raise R1kitError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if not (lr >= 0 and math.isfinite(lr)) or beta < 0 or not math.isfinite(beta):
        raise R1kitError(f"--lr and --beta must be finite and >= 0, got lr {lr}, beta {beta}")
    if mini_batches > prompts_per_step * group_size:
        raise R1kitError(f"--mini-batches {mini_batches} is more than the {prompts_per_step * group_size} rollouts "
                         f"of a step")
    if placebo and model:
        raise R1kitError("--placebo changes the tiny demo base's corpus; it does not apply with --model")
    if task == "jsonl" and not data:
        raise R1kitError("--task jsonl needs --data FILE")
    if data:  # a file task: a seeded split of the file, so the held-out problems are never trained on
        task_kw = {"path": data, "holdout": "train"}
        eval_kw = {"path": eval_data} if eval_data else {"path": data, "holdout": "test"}
    else:
        task_kw, eval_kw = DEMO_TASKS.get(task, {}), ({"path": eval_data} if eval_data else None)
    ec = EvalConfig(task=task, problems=eval_problems, k=4, temperature=0.6, top_p=0.95,
                    max_new_tokens=max_new_tokens, seed=1234)
    lc = LoRAConfig(rank=lora_rank, alpha=lora_alpha, targets=[t for t in lora_targets.split(",") if t]) \
        if lora_rank else None
    summaries = []
    for s in range(seed, seed + seeds):
        gc = GRPOConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size,
                        lr=lr or (3e-6 if model else 2e-4), beta=beta, max_new_tokens=max_new_tokens, seed=s,
                        mini_batches=mini_batches, mu=mu, micro_batch_tokens=micro_batch_tokens,
                        grad_checkpointing=grad_checkpointing)
        folder = run_dir if seeds == 1 else str(Path(run_dir) / f"seed-{s}")
        summaries.append(run_zero(folder, model or None, task, task_kw, gc, demo_base(task, task_kw, base_steps, s,
                                  placebo), ec, resume=resume, ckpt_every=ckpt_every, eval_every=eval_every,
                                  lora_cfg=lc, eval_task_kw=eval_kw))
    if seeds > 1:
        from r1kit.rl.report import write_seeds
        print(f"summary over {seeds} seeds: {write_seeds(Path(run_dir), summaries)}")
