"""The one RL loop: `r1kit zero` and every RL stage of the pipeline run GRPO through `train`.

The loop owns what every RL run needs: the reference (a frozen copy, or the LoRA policy with its adapters off),
the optimiser, an engine sized to the step, resume from the newest checkpoint, metrics.jsonl and TensorBoard,
reference refreshes and checkpoints. Callers bring what differs: the task and template, how a step's prompts are
picked, the reward of a step, and an optional periodic evaluation.

Resume: data order and sampling seeds are functions of (seed, step), and a checkpoint holds the policy, the
reference, the optimiser and the RNGs, so a resumed run continues exactly.
"""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from r1kit.rl.grpo import GRPOConfig, grpo_step, reference_logprobs


class RLRun(NamedTuple):
    rows: list[dict]  # metrics.jsonl, resumed rows included
    extra: dict  # what the first call stored with its checkpoints (e.g. the before-training evaluation)
    engine: object  # sized and warm; the caller's final evaluation reuses it
    rollout_model: object  # what the engine samples from (the policy, or its merged copy under LoRA)


def read_metrics(path: Path, upto: int) -> list[dict]:
    """Rows of metrics.jsonl with step <= upto; a torn last line (a crash mid-write) is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= upto:
                rows.append(row)
    return rows


def engine_for(model, tok, task, cfg: GRPOConfig, template: str, extra_rows: int = 0, world: int = 1):
    """An engine sized to a step: this rank's B/world * G rows (or more for evaluation) and the longest prompt plus
    the completion,
    estimated from the task's first prompts with room to spare; a small prefix cache (the group fan-out already
    shares each prompt's prefill)."""
    from r1kit.engine.engine import Engine
    from r1kit.tasks import prompt_ids

    n = min(len(task), 256)
    longest = max(len(prompt_ids(tok, task, task[i], template)) for i in range(n)) if n else 64
    max_seq = min(model.cfg.max_seq_len, int(longest * 1.5) + 64 + cfg.max_new_tokens)
    rows = max(cfg.prompts_per_step // world * cfg.group_size, extra_rows)
    return Engine(model, tok, max_batch=rows, max_seq_len=max_seq, prefix_cache_bytes=64 << 20)


def train(policy, tok, task, cfg: GRPOConfig, out: Path, *, template: str,
          pick: Callable[[random.Random, int], list], reward_for_step: Callable[[int], Callable],
          evaluate: Callable[[int, object], dict] | None = None, eval_every: int = 0, eval_rows: int = 0,
          ckpt_every: int = 10, keep_last: int = 2, extra: dict | None = None, log=print,
          progress: bool = False, setup: Callable | None = None) -> RLRun:
    """GRPO for cfg.steps steps, resuming from the newest checkpoint in `out`.

    pick(rng, n) -> n examples for a step; reward_for_step(step) -> reward_fn; evaluate(step, engine) -> dict of
    figures merged into that step's row every `eval_every` steps and at the last step (keys "text/NAME" go to
    TensorBoard as text only). setup(engine, resumed)
    -> dict runs once before the first step of a fresh run (a before-training evaluation) and is stored as `extra`.
    """
    from r1kit.errors import R1kitError
    from r1kit.rl.state import latest, load_state, save_state
    from r1kit.train import dist, lora
    from r1kit.train.memory import check, configure_checkpointing

    d = dist.setup()  # torchrun's processes join here; one process: nothing changes
    if cfg.prompts_per_step % d.world:
        raise R1kitError(f"prompts_per_step {cfg.prompts_per_step} must be a multiple of the {d.world} processes "
                         f"(each rank rolls out whole groups)")
    local_n = cfg.prompts_per_step // d.world
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy.float()  # fp32 master weights everywhere; on CUDA the forward runs under bf16 autocast
    plan = configure_checkpointing(policy, cfg)
    check(plan, next(policy.parameters()).device.type)  # say what to change instead of being killed mid-step
    # what the engine samples from: the policy itself, or an unsharded copy (FSDP2 keeps only shards) whose LoRA,
    # if any, is merged (the engine's CPU kernels read plain weights)
    gathered = None
    if d.on:  # in the compute dtype: bf16 on CUDA (the engine's), fp32 on CPU
        gathered = copy.deepcopy(policy).eval().requires_grad_(False)
        if next(policy.parameters()).device.type == "cuda":
            gathered.to(torch.bfloat16)
    if lora.is_lora(policy):  # the reference is the base: the same weights with the adapters off, no copy
        ref_model = None
        base_ref = reference_logprobs(policy, cfg)

        def ref_fn(ids, mask):
            with lora.adapters_off(policy):
                return base_ref(ids, mask)
        rollout_model = lora.merged(gathered or policy)
    else:
        ref_model = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.beta else None
        ref_fn = reference_logprobs(ref_model, cfg) if ref_model is not None else None
        rollout_model = gathered or policy
    if d.on:
        dist.shard(policy)
        if ref_model is not None:
            dist.shard(ref_model, trainable=False)

    def refresh_rollout_model():
        if gathered is not None:
            dist.gather_weights(policy, gathered)
        if lora.is_lora(policy):
            lora.merged(gathered or policy, into=rollout_model)

    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    engine = engine_for(rollout_model, tok, task, cfg, template, eval_rows, d.world)
    start, extra = 0, dict(extra or {})
    resume_from = latest(out, log if d.main else (lambda *a: None))
    if resume_from is not None:
        state = load_state(resume_from, policy, ref_model, opt)
        start, extra = state["step"], state["extra"] or extra
        log(f"resumed from {resume_from.name} at step {start}")
        refresh_rollout_model()
    elif setup is not None:
        extra |= setup(engine)
    metrics_path = out / "metrics.jsonl"
    rows = read_metrics(metrics_path, start)
    main = d.main  # rank 0 alone writes metrics, TensorBoard and progress
    if main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    writer = _tensorboard(out, start) if main else None
    bar = _progress(cfg.steps, start) if progress and main else None
    with (metrics_path.open("a") if main else open(os.devnull, "w")) as mf:
        for step in range(start + 1, cfg.steps + 1):
            if cfg.ref_refresh and step > 1 and (step - 1) % cfg.ref_refresh == 0 and ref_model is not None:
                ref_model.load_state_dict(policy.state_dict())
            if step > start + 1:  # the last step's update (resume and the first step start from fresh weights)
                refresh_rollout_model()
            examples = pick(random.Random(cfg.seed * 1_000_003 + step), cfg.prompts_per_step)
            mine = examples[d.rank * local_n:(d.rank + 1) * local_n]  # whole groups; seeds by global index
            stats = grpo_step(policy, ref_fn, engine, opt, tok, mine, task, reward_for_step(step), cfg, step,
                              template=template, first=d.rank * local_n)
            if evaluate is not None and eval_every and (step % eval_every == 0 or step == cfg.steps):
                refresh_rollout_model()
                stats |= evaluate(step, engine)
            texts = {k: stats.pop(k) for k in [k for k in stats if k.startswith("text/")]}  # TensorBoard only
            stats["step"] = step
            rows.append(stats)
            mf.write(json.dumps(stats) + "\n")
            mf.flush()
            if writer is not None:
                for k, v in stats.items():
                    if isinstance(v, (int, float)) and k != "step":
                        writer.add_scalar(k, v, step)
                for k, v in texts.items():
                    writer.add_text(k[len("text/"):], v, step)
            line = f"reward {stats['reward']:.2f} acc {stats['accuracy']:.2f} len {stats['length_mean']:.0f}"
            if bar is not None:
                bar[0].update(bar[1], completed=step, info=line)
            elif main and (step % 5 == 0 or step == cfg.steps):
                log(f"  rl step {step}/{cfg.steps} {line}")
            if ckpt_every and (step % ckpt_every == 0 or step == cfg.steps):
                save_state(out, step, policy, ref_model, opt, keep_last, extra=extra, tokenizer=tok)
    if bar is not None:
        bar[0].stop()
    if writer is not None:
        writer.close()
    refresh_rollout_model()
    return RLRun(rows, extra, engine, rollout_model)


def _tensorboard(out: Path, start: int):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out / "tb"), purge_step=start + 1 if start else None)


def _progress(total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("GRPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                 TimeRemainingColumn())
    p.start()
    return p, p.add_task("grpo", total=total, completed=start, info="")
