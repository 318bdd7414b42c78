"""Stage `rl`: GRPO on a model with rule rewards, language consistency and (optionally) a reward model in the last
part; used for R1-Zero (template r1-zero), reasoning RL (stage 2), all-scenario RL (stage 4) and the student-RL
comparison. The loop is rl.trainer.train (the one `r1kit zero` runs too); this file picks prompts and builds the
reward.

Reward per completion (R1-v2 Eq. 8-10), weights from `grpo.rewards` (names of r1kit.rewards.REWARDS):
- reasoning prompts: the weighted rule rewards (accuracy, format or format_r1, language, ...), with the
  language target taken from each example's meta and the chat template's answer rule when template is r1;
- general prompts (a `general_frac` share of each step, from the built-in chats or a jsonl): the same rewards
  without accuracy, plus `rm_weight` x the reward model's score during the last `rm_last_steps` steps.
A reward that does not apply (language of an empty thought) is neutral, as in rewards.combine: the sample counts
that reward's mean over the samples of its prompt that it applies to; the per-reward logs average over the samples
it applies to (None here, NaN in grpo's logs, so the mean is right over every rank's samples under torchrun).

Resume: rl.trainer's checkpoints (policy, reference, optimiser, RNG) every `ckpt_every` steps; data order and
sampling seeds are functions of (seed, step), so a resumed stage continues exactly where it stopped.
"""
from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.pipeline.config import file_field
from r1kit.rl.grpo import GRPOConfig
from r1kit.train.lora import LoRAConfig


@dataclass
class RLStageConfig:
    task: str = "arith-mix"
    task_kw: dict = field(default_factory=dict)
    template: str = "r1"  # r1-zero (R1-Zero on a base) or r1 (chat template, after cold start)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward_params: dict = field(default_factory=dict)  # per-reward options, e.g. {"overlong": {...}}
    general_frac: float = 0.0  # share of each step's prompts drawn from non-reasoning chats
    general: str = file_field()  # chats jsonl; "" = built-in
    rm_weight: float = 1.0
    rm_last_steps: int = 0  # reward-model reward on general prompts only in the final N steps
    ckpt_every: int = 10
    keep_last: int = 1
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank 0 = full fine-tune


def make_reward_fn(cfg: RLStageConfig, rm=None):
    """(completions, golds, examples=..., **ctx) -> (total, per_fn) following the module docstring. `rm` is an
    RMScorer (or None when the reward model is not active this step)."""
    from r1kit.rewards import combine

    rule = combine(cfg.grpo.rewards, cfg.reward_params or None)
    no_acc = {k: v for k, v in cfg.grpo.rewards.items() if k != "accuracy"}
    general_rule = combine(no_acc, {k: v for k, v in cfg.reward_params.items() if k in no_acc} or None) \
        if no_acc else None
    ctx_template = "r1" if cfg.template == "r1" else "r1-zero"

    def reward(completions, golds, examples=None, **ctx):
        n = len(completions)
        examples = examples or [None] * n
        general = [i for i, ex in enumerate(examples) if ex is not None and ex.meta.get("kind") == "general"]
        reasoning = [i for i in range(n) if i not in set(general)]
        total = [0.0] * n
        names = list(cfg.grpo.rewards) + (["reward_model"] if rm is not None else [])
        per_fn = {k: [None] * n for k in names}

        def apply(fn, idx):
            if not idx or fn is None:
                return
            sub = {k: [v[i] for i in idx] if isinstance(v, list) and len(v) == n else v for k, v in ctx.items()}
            t, parts = fn([completions[i] for i in idx], [golds[i] for i in idx], template=ctx_template,
                          examples=[examples[i] for i in idx],
                          lang=[(examples[i].meta.get("lang") if examples[i] else None) or "en" for i in idx], **sub)
            for j, i in enumerate(idx):
                total[i] += t[j]
                for k, v in parts.items():
                    per_fn[k][i] = v[j]

        apply(rule, reasoning)
        apply(general_rule, general)
        if rm is not None and general:
            from r1kit.tasks import ChatTask
            scores = rm([ChatTask.messages(examples[i]) for i in general], [completions[i] for i in general])
            for i, s in zip(general, scores):
                total[i] += cfg.rm_weight * s
                per_fn["reward_model"][i] = s
        return total, per_fn  # None where a reward does not apply: grpo logs the mean over the rest

    return reward


def _batch(task, general: list, n: int, frac: float, rng: random.Random) -> list:
    n_gen = round(n * frac) if general else 0
    picks = [task[i] for i in rng.sample(range(len(task)), n - n_gen)]
    return picks + [general[rng.randrange(len(general))] for _ in range(n_gen)]


def run(cfg: RLStageConfig, inputs: dict, out: Path, ctx):
    from r1kit.errors import R1kitError
    from r1kit.pipeline import modelio
    from r1kit.pipeline.runner import StageResult
    from r1kit.rl import trainer
    from r1kit.rl.state import checkpoints
    from r1kit.tasks import ChatTask, chat_examples, get_task
    from r1kit.train import dist, lora

    gc = cfg.grpo
    if cfg.template not in ("r1", "r1-zero"):
        raise R1kitError(f"rl stage: template must be r1 or r1-zero, got {cfg.template!r}")
    if cfg.rm_last_steps and "reward_model" not in inputs:
        raise R1kitError("rl stage: rm_last_steps > 0 needs a `reward_model` input")
    policy, tok, _ = modelio.load(inputs["model"])
    if cfg.lora.rank:
        lora.apply(policy, cfg.lora)
    reasoning = get_task(cfg.task, "train", **cfg.task_kw)
    general = chat_examples(cfg.general) if cfg.general_frac > 0 else []
    task = ChatTask(reasoning) if cfg.template == "r1" else reasoning
    scorer = None
    if "reward_model" in inputs:
        from r1kit.pipeline.reward_model import load_rm
        scorer = load_rm(inputs["reward_model"])
    rm_from = gc.steps - cfg.rm_last_steps + 1 if cfg.rm_last_steps else gc.steps + 1
    t0 = time.time()
    result = trainer.train(
        policy, tok, task, gc, out, template=cfg.template,
        pick=lambda rng, n: _batch(reasoning, general, n, cfg.general_frac, rng),
        reward_for_step=lambda step: make_reward_fn(cfg, scorer if step >= rm_from else None),
        ckpt_every=cfg.ckpt_every, keep_last=cfg.keep_last, log=ctx.log)
    rows = result.rows
    for r in rows:
        r["rm_active"] = r["step"] >= rm_from
    modelio.save(policy, tok, out / "model", template=cfg.template, adapter=out / "adapter",
                 init=str(inputs["model"]), rl_steps=gc.steps, lora=lora.config_dict(policy))
    dist.on_main(lambda: [shutil.rmtree(ck, ignore_errors=True) for ck in checkpoints(out)])  # superseded
    tail = rows[-5:] or [{}]
    mean = lambda k: sum(r.get(k, 0.0) for r in tail) / len(tail)  # noqa: E731
    metrics = {"steps": gc.steps, "reward_last5": mean("reward"), "accuracy_last5": mean("accuracy"),
               "length_last5": mean("length_mean"), "seconds_this_call": time.time() - t0}
    for k in ("reward/language", "reward/reward_model"):
        if any(k in r for r in tail):
            metrics[k.replace("reward/", "") + "_last5"] = mean(k)
    return StageResult({"model": "model"}, metrics)
