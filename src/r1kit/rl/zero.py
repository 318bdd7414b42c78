"""R1-Zero end to end (`r1kit zero`, what `make demo` runs): pretrain or load a base, GRPO with rule rewards only,
held-out pass@1 before and after, and a run folder with metrics, TensorBoard events, checkpoints, report and plots.

On a 2-core CPU the tiny base is a DeepSeek-V3-architecture model (tiny-moe: MLA + MoE + MTP) pretrained on a
synthetic corpus where a minority of solutions show their work in <think> and the rest state a bare answer; RL
has to discover that thinking pays. The same command trains a real checkpoint with `--model PATH --task gsm8k`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1kit.errors import R1kitError
from r1kit.eval.heldout import EvalConfig
from r1kit.rl.grpo import GRPOConfig
from r1kit.train.lora import DEFAULT_TARGETS, LoRAConfig

DEMO_BASE_CACHE = Path(".cache/r1kit")
# The demo task: sums of 3-4 digits. A tiny model can learn each step of the scratchpad ("4+3=7 7+1=8") far more
# reliably than the whole sum at once, so thinking pays.
DEMO_TASKS = {"arith": dict(n_terms=(3, 4), max_operand=9, ops="+")}


@dataclass
class BaseConfig:
    """The tiny demo base: tokenizer, architecture and pretraining corpus."""
    preset: str = "tiny-moe"
    vocab_size: int = 384  # BPE trained on the corpus
    worked_frac: float = 0.7  # share of corpus solutions that think step by step
    choose_frac: float = 0.2  # how often the base chooses to think (its prior on the choice token)
    bare_guess: bool = True  # bare answers are quick guesses, usually wrong, as a base model's hasty answers are
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


def _examples(task, n: int, rng: random.Random):
    idx = rng.sample(range(len(task)), min(n, len(task)))
    return [task[i] for i in idx]


# --------------------------------------------------------------------------------------------------------------
# the base model

def build_base(task_name: str, task_kw: dict, bc: BaseConfig, log=print):
    """Pretrain the tiny base (or reuse the cached one keyed by its config) -> (model, tokenizer)."""
    from r1kit.checkpoint.hf import load_model, save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.sft import SFTConfig, train
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer

    key = hashlib.sha256(json.dumps([task_name, task_kw, dataclasses.asdict(bc)], sort_keys=True).encode())
    folder = DEMO_BASE_CACHE / f"zero-base-{key.hexdigest()[:12]}"
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        log(f"reusing the cached base model {folder}")
        tok = Tokenizer.from_file(folder)
        tok.template = "r1-zero"  # bases cached before templates travelled with checkpoints
        return load_model(folder), tok
    t0 = time.time()
    torch.manual_seed(bc.seed)
    task = get_task(task_name, split="train", **task_kw)
    rng = random.Random(bc.seed)
    n_docs = bc.steps * bc.batch_size
    docs = []  # (example, prompt, completion, worked)
    for _ in range(n_docs):
        ex = task[rng.randrange(len(task))]
        worked = rng.random() < bc.worked_frac
        completion = task.worked_solution(ex) if worked else task.bare_solution(ex, guess=bc.bare_guess)
        docs.append((ex, task.prompt(ex, template="r1-zero"), " " + completion.lstrip(), worked))
    tok = Tokenizer.train_bpe([p + c for _, p, c, _ in docs[:4000]], bc.vocab_size)
    tok.template = "r1-zero"  # saved with the base: every command then prompts it the way it was trained
    # The base should know how to work step by step yet rarely choose to, as a pretrained LM rarely writes out
    # its reasoning unprompted. So the loss on the choice token (the first one where a worked and a bare
    # completion differ) is kept on all bare documents but only on enough worked ones to make the learnt prior
    # `choose_frac`; every other token of every document is trained.
    keep_choice = bc.choose_frac * (1 - bc.worked_frac) / (bc.worked_frac * (1 - bc.choose_frac))
    examples = []
    for ex, p, c, worked in docs:
        pi, ci = tok.encode(p, add_bos=True), tok.encode(c) + [tok.eos_id]
        mask = [0] * len(pi) + [1] * len(ci)  # loss on the completion only
        if worked and rng.random() > keep_choice:
            bare = tok.encode(" " + task.bare_solution(ex, guess=bc.bare_guess).lstrip())
            choice = next(i for i, (a, b) in enumerate(zip(ci, bare)) if a != b)
            mask[len(pi) + choice] = 0
        examples.append((pi + ci, mask))
    cfg = ModelConfig.from_name(bc.preset).replace(vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id)
    model = Transformer(cfg)
    sc = SFTConfig(steps=bc.steps, batch_size=bc.batch_size, lr=bc.lr, warmup=50, seed=bc.seed)

    def show(step, st):
        if (step + 1) % 250 == 0:
            log(f"  pretrain step {step + 1}/{bc.steps} loss {st['loss']:.3f}")

    log(f"pretraining the tiny base ({bc.preset}, {model.num_params():,} parameters) on {n_docs:,} synthetic "
        f"solutions, {bc.worked_frac:.0%} of them worked step by step (prior to think: {bc.choose_frac:.0%})")
    train(model, examples, sc, log=show)
    save_model(model, folder)
    tok.save(folder)
    log(f"base model saved to {folder} in {time.time() - t0:.0f}s")
    return model, tok


# --------------------------------------------------------------------------------------------------------------

def run_zero(run_dir: str, model_path: str | None, task_name: str, task_kw: dict, gc: GRPOConfig, bc: BaseConfig,
             ec: EvalConfig, resume: bool = False, ckpt_every: int = 10, keep_last: int = 2, eval_every: int = 5,
             lora_cfg: LoRAConfig | None = None, eval_task_kw: dict | None = None, log=print) -> dict:
    """The R1-Zero recipe on r1kit's one RL loop (rl.trainer) and its one evaluator (eval.heldout)."""
    from r1kit.eval.heldout import evaluate_examples, held_out
    from r1kit.rewards import combine
    from r1kit.rl import report, trainer
    from r1kit.runs import prepare_run_dir
    from r1kit.tasks import get_task
    from r1kit.train import lora

    from r1kit.train import dist

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
    else:
        if not d.main:
            dist.barrier()  # rank 0 pretrains (or finds) the cached base first
        policy, tok = build_base(task_name, task_kw, bc, log)
        if d.main:
            dist.barrier()
    template = tok.template
    if lora_cfg is not None and lora_cfg.rank:
        lora.apply(policy, lora_cfg)
    train_task = get_task(task_name, split="train", **task_kw)
    test_task = get_task(task_name, split="test", **(task_kw if eval_task_kw is None else eval_task_kw))
    held = held_out(test_task, ec.problems, 12345)
    quick = held[: max(1, ec.problems // 2)]
    quick_cfg = dataclasses.replace(ec, k=min(2, ec.k))

    def evaluate(examples, cfg, engine, model):
        return evaluate_examples(model, tok, test_task, examples, template, cfg, engine=engine)

    def setup(engine):
        before = evaluate(held, ec, engine, engine.model)
        if d.main:
            meta = {"task": task_name, "task_kw": task_kw, "grpo": dataclasses.asdict(gc),
                    "base": dataclasses.asdict(bc), "eval": dataclasses.asdict(ec), "lora": lora.config_dict(policy),
                    "template": template, "world_size": d.world, "model": model_path or "tiny demo base"}
            (run / "run.json").write_text(json.dumps(meta, indent=2))
        log(f"held-out before GRPO: pass@1 {before['pass@1']:.1%}, mean length {before['length']:.1f} tokens")
        return {"before": before}

    def periodic(step, engine):
        q = evaluate(quick, quick_cfg, engine, engine.model)
        return {"heldout_pass@1": q["pass@1"], "heldout_length": q["length"]}

    reward = combine(gc.rewards)
    result = trainer.train(
        policy, tok, train_task, gc, run, template=template,
        pick=lambda rng, n: _examples(train_task, n, rng), reward_for_step=lambda step: reward,
        evaluate=periodic, eval_every=eval_every, eval_rows=ec.k, ckpt_every=ckpt_every, keep_last=keep_last,
        log=log, progress=True, setup=setup)
    before = result.extra["before"]
    after = evaluate(held, ec, result.engine, result.rollout_model)
    log(f"held-out after GRPO: pass@1 {after['pass@1']:.1%}, mean length {after['length']:.1f} tokens")
    summary = {"before": before, "after": after, "steps": gc.steps, "seconds": time.time() - t_start}
    if d.main:
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if lora.is_lora(policy) and not d.on:
            lora.save_adapter(policy, run / "adapter", base=model_path or "")
        report.write(run, summary, result.rows)
        log(f"report: {run / 'report.md'}")
    return summary


def zero(run_dir: str = "runs/zero", model: str = "", task: str = "arith", data: str = "", eval_data: str = "",
         steps: int = 60, prompts_per_step: int = 16, group_size: int = 8, lr: float = 0.0, beta: float = 0.001,
         max_new_tokens: int = 40, base_steps: int = 2000, eval_problems: int = 200, seed: int = 0,
         resume: bool = False, ckpt_every: int = 10, mini_batches: int = 1, mu: int = 1,
         micro_batch_tokens: int = 8192, grad_checkpointing: str = "auto", lora_rank: int = 0,
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
        lr: learning rate; 0 = 3e-4 for the tiny base, 3e-6 (the paper's) for a real model.
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
    """
    for name, value, low in (("steps", steps, 1), ("prompts_per_step", prompts_per_step, 1),
                             ("group_size", group_size, 2), ("max_new_tokens", max_new_tokens, 1),
                             ("eval_problems", eval_problems, 1), ("ckpt_every", ckpt_every, 1),
                             ("mini_batches", mini_batches, 1), ("mu", mu, 1), ("lora_rank", lora_rank, 0),
                             ("micro_batch_tokens", micro_batch_tokens, 0)):
        if value < low:
            raise R1kitError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if not (lr >= 0 and math.isfinite(lr)) or beta < 0 or not math.isfinite(beta):
        raise R1kitError(f"--lr and --beta must be finite and >= 0, got lr {lr}, beta {beta}")
    if mini_batches > prompts_per_step * group_size:
        raise R1kitError(f"--mini-batches {mini_batches} is more than the {prompts_per_step * group_size} rollouts "
                         f"of a step")
    if task == "jsonl" and not data:
        raise R1kitError("--task jsonl needs --data FILE")
    if data:  # a file task: a seeded split of the file, so the held-out problems are never trained on
        task_kw = {"path": data, "holdout": "train"}
        eval_kw = {"path": eval_data} if eval_data else {"path": data, "holdout": "test"}
    else:
        task_kw, eval_kw = DEMO_TASKS.get(task, {}), ({"path": eval_data} if eval_data else None)
    gc = GRPOConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size,
                    lr=lr or (3e-6 if model else 3e-4), beta=beta, max_new_tokens=max_new_tokens, seed=seed,
                    mini_batches=mini_batches, mu=mu, micro_batch_tokens=micro_batch_tokens,
                    grad_checkpointing=grad_checkpointing)
    ec = EvalConfig(task=task, problems=eval_problems, k=4, temperature=0.6, top_p=0.95,
                    max_new_tokens=max_new_tokens, seed=1234)
    lc = LoRAConfig(rank=lora_rank, alpha=lora_alpha, targets=[t for t in lora_targets.split(",") if t]) \
        if lora_rank else None
    run_zero(run_dir, model or None, task, task_kw, gc, BaseConfig(steps=base_steps, seed=seed), ec,
             resume=resume, ckpt_every=ckpt_every, lora_cfg=lc, eval_task_kw=eval_kw)
