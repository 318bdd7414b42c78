"""R1-Zero end to end (`r1kit zero`, what `make demo` runs): pretrain or load a base, GRPO with rule rewards only,
held-out pass@1 before and after, and a run folder with metrics, TensorBoard events, checkpoints, report and plots.

On a 2-core CPU the tiny base is a DeepSeek-V3-architecture model (tiny-moe: MLA + MoE + MTP) pretrained on a
synthetic corpus where a minority of solutions show their work in <think> and the rest state a bare answer; RL
has to discover that thinking pays. The same command trains a real checkpoint with `--model PATH --task gsm8k`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.errors import R1kitError
from r1kit.rl.grpo import GRPOConfig, grpo_step

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


@dataclass
class EvalConfig:
    problems: int = 200  # held-out problems
    k: int = 4  # samples per problem; pass@1 is their mean (R1 protocol)
    temperature: float = 0.6
    top_p: float = 0.95
    every: int = 5  # GRPO steps between held-out evaluations (on `problems // 2` problems, k=2)


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
        return load_model(folder), Tokenizer.from_file(folder)
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
# held-out evaluation

@torch.no_grad()
def evaluate(engine, tok, task, examples, k: int, temperature: float, top_p: float, max_new_tokens: int,
             seed: int = 1234) -> dict:
    """pass@1 (mean over k samples), mean response length (tokens), format and reflective-word rates."""
    from r1kit.engine.sampling import SamplingParams
    from r1kit.rewards import get_reward, reflection_rate

    prompts = [tok.encode(task.prompt(ex, template="r1-zero"), add_bos=True) for ex in examples]
    params = [SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                             stop_token_ids=[tok.eos_id], seed=seed + i * k) for i in range(len(prompts))]
    results = engine.generate(prompts, params, n=k)
    texts = [tok.decode(r.token_ids, skip_special_tokens=True) for r in results]
    correct = [task.evaluate(examples[i // k], t) for i, t in enumerate(texts)]
    fmt = get_reward("format")(texts, [ex.answer for ex in examples for _ in range(k)])
    return {"pass@1": sum(correct) / len(correct),
            "length_mean": sum(len(r.token_ids) for r in results) / len(results),
            "format": sum(f or 0 for f in fmt) / len(fmt),
            "reflection_rate": sum(map(reflection_rate, texts)) / len(texts),
            "sample": texts[0]}


# --------------------------------------------------------------------------------------------------------------

def run_zero(run_dir: str, model_path: str | None, task_name: str, task_kw: dict, gc: GRPOConfig, bc: BaseConfig,
             ec: EvalConfig, resume: bool = False, ckpt_every: int = 10, keep_last: int = 2, log=print) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from torch.utils.tensorboard import SummaryWriter

    from r1kit.engine.engine import Engine
    from r1kit.rewards import combine
    from r1kit.rl import report
    from r1kit.rl.state import checkpoints, load_state, save_state
    from r1kit.tasks import get_task

    t_start = time.time()
    run = Path(run_dir)
    if run.exists() and any(run.iterdir()) and not resume:
        raise R1kitError(f"{run}: run folder exists and is not empty; pass --resume to continue it or choose "
                         f"another --run-dir")
    run.mkdir(parents=True, exist_ok=True)
    if model_path:
        from r1kit.engine.load import load_for_inference
        policy, tok = load_for_inference(model_path)
    else:
        policy, tok = build_base(task_name, task_kw, bc, log)
    policy.float().eval()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=gc.lr, weight_decay=gc.weight_decay, betas=(0.9, 0.99))
    engine = Engine(policy, tok, max_batch=gc.prompts_per_step * gc.group_size)
    reward_fn = combine(gc.rewards)
    train_task = get_task(task_name, split="train", **task_kw)
    test_task = get_task(task_name, split="test", **task_kw)
    held_out = _examples(test_task, ec.problems, random.Random(12345))
    quick = held_out[: max(1, ec.problems // 2)]

    def heldout(examples, k):
        return evaluate(engine, tok, test_task, examples, k, ec.temperature, ec.top_p, gc.max_new_tokens)

    meta_path = run / "run.json"
    start = 0
    if resume and checkpoints(run):
        state = load_state(checkpoints(run)[-1], policy, ref, opt)
        start, before = state["step"], state["extra"]["before"]
        log(f"resumed from {checkpoints(run)[-1]} at step {start}")
    else:
        before = heldout(held_out, ec.k)
        meta_path.write_text(json.dumps({"task": task_name, "task_kw": task_kw, "grpo": dataclasses.asdict(gc),
                                         "base": dataclasses.asdict(bc), "eval": dataclasses.asdict(ec),
                                         "model": model_path or "tiny demo base"}, indent=2))
    log(f"held-out before GRPO: pass@1 {before['pass@1']:.1%}, mean length {before['length_mean']:.1f} tokens")
    metrics_path = run / "metrics.jsonl"
    lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
    kept = [ln for ln in lines if json.loads(ln)["step"] <= start]  # drop steps the crash lost
    metrics_path.write_text("".join(ln + "\n" for ln in kept))
    writer = SummaryWriter(str(run / "tb"), purge_step=start + 1 if start else None)
    columns = [TextColumn("GRPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, transient=False) as bar, metrics_path.open("a") as mf:
        job = bar.add_task("grpo", total=gc.steps, completed=start, info="")
        for step in range(start + 1, gc.steps + 1):
            if gc.ref_refresh and step > 1 and (step - 1) % gc.ref_refresh == 0:
                ref.load_state_dict(policy.state_dict())
            data_rng = random.Random(gc.seed * 1_000_003 + step)  # data order is a function of the step
            stats = grpo_step(policy, ref, engine, opt, tok, _examples(train_task, gc.prompts_per_step, data_rng),
                              train_task, reward_fn, gc, step)
            if step % ec.every == 0 or step == gc.steps:
                q = heldout(quick, 2)
                stats |= {"heldout_pass@1": q["pass@1"], "heldout_length": q["length_mean"]}
            stats["step"] = step
            mf.write(json.dumps(stats) + "\n")
            mf.flush()
            for k, v in stats.items():
                if isinstance(v, (int, float)) and k != "step":
                    writer.add_scalar(k, v, step)
            bar.update(job, completed=step, info=f"reward {stats['reward']:.2f} acc {stats['accuracy']:.2f} "
                                                 f"len {stats['length_mean']:.0f}")
            if step % ckpt_every == 0 or step == gc.steps:
                save_state(run, step, policy, ref, opt, keep_last, extra={"before": before}, tokenizer=tok)
    writer.close()
    after = heldout(held_out, ec.k)
    log(f"held-out after GRPO: pass@1 {after['pass@1']:.1%}, mean length {after['length_mean']:.1f} tokens")
    summary = {"before": before, "after": after, "steps": gc.steps, "seconds": time.time() - t_start}
    report.write(run, summary, [json.loads(ln) for ln in metrics_path.read_text().splitlines()])
    log(f"report: {run / 'report.md'}")
    return summary


def zero(run_dir: str = "runs/zero", model: str = "", task: str = "arith", data: str = "", steps: int = 60,
         prompts_per_step: int = 16, group_size: int = 8, lr: float = 0.0, beta: float = 0.001,
         max_new_tokens: int = 40, base_steps: int = 2000, eval_problems: int = 200, seed: int = 0,
         resume: bool = False, ckpt_every: int = 10) -> None:
    """R1-Zero: GRPO with rule rewards (accuracy + format) on a base model, with held-out pass@1 before and after.

    Args:
        run_dir: run folder (metrics.jsonl, TensorBoard events, checkpoints, report.md, plots).
        model: an HF checkpoint folder or GGUF to train; empty = pretrain (or reuse) the tiny demo base.
        task: arith, countdown, gsm8k, math or jsonl.
        data: jsonl file for file-backed tasks (gsm8k, math, jsonl).
        steps: GRPO steps.
        prompts_per_step: questions per step (B).
        group_size: samples per question (G).
        lr: learning rate; 0 = 3e-4 for the tiny base, 3e-6 (the paper's) for a real model.
        beta: k3 KL coefficient.
        max_new_tokens: completion length limit.
        base_steps: pretraining steps of the tiny base.
        eval_problems: held-out problems for the before/after pass@1.
        seed: seed of data order, sampling and the tiny base.
        resume: continue the run in run_dir from its last checkpoint.
        ckpt_every: steps between checkpoints.
    """
    task_kw = {"path": data} if data else DEMO_TASKS.get(task, {})
    gc = GRPOConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size,
                    lr=lr or (3e-6 if model else 3e-4), beta=beta, max_new_tokens=max_new_tokens, seed=seed)
    run_zero(run_dir, model or None, task, task_kw, gc, BaseConfig(steps=base_steps, seed=seed),
             EvalConfig(problems=eval_problems), resume=resume, ckpt_every=ckpt_every)
