"""Distillation vs RL on a small student at matched compute, 3 seeds: the R1 paper's Table 6 argument at CPU scale.

    .venv/bin/python bench/distill_vs_rl.py [--recipe recipes/distill-vs-rl-tiny.yaml] [--run-dir runs/distill-vs-rl]
                                            [--seeds 0 1 2] [--threads 1]

The paper: distilling R1 into Qwen-32B (72.6 AIME) beats large-scale RL on Qwen-32B-Base (47.0). Its premise is that
the small base cannot find the reasoning pattern by itself while the large one's RL found it. This bench builds that
situation (the recipe's header says how) and runs, for each seed, on the same student base, the same task, the same
chat template and the same evaluation (the recipe's `eval`):

    distill      SFT of the student on the teacher's verified samples
    rl_1x        GRPO on the student with the compute of its seed's distillation run
    rl_5x        the same with 5x that compute
    distill_rl   GRPO after distillation, with 1x the compute again (so 2x in all)

Compute is counted in forward-token equivalents (FTE) of the student, forward = 1, forward + backward = 3 (the
backward costs about two forwards); FLOPs ~ 2 x parameters x FTE:
    SFT: the tokens of every row drawn, x 3 (the stage's exact batch draws are replayed);
    GRPO: prompt prefill (once per prompt: the engine shares it across the group) + generated tokens, + 3 x the
    trained tokens (prompt + completion of every sample) + the reference model's forward over the same tokens.
The teacher's sampling of the distillation data is NOT counted: the comparison is what the student's own budget
buys, as in the paper (the R1 samples are made once and reused by every student). It is reported separately.
RL steps are set before the run from the budget and the measured mean completion length of the model RL starts from;
the compute each run really used is measured afterwards from its metrics and reported beside the budget.

Also reported: the student base's pass@8 on the held-out hard items (about 0 means GRPO has no accuracy signal) and
how many rollouts of each RL run were right (its signal). Stages are cached by the pipeline runner in the run folder,
bases also in .cache/r1kit of the working directory, so a re-run only does what changed. Runtime with the shipped
recipe: ~21 minutes from scratch on one core of a 2-core CPU (docs/PIPELINE.md has the figures). The last line of
stdout is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Compute:
    """Token counts of one training run of the student; `fte` weighs them (forward 1, forward + backward 3)."""
    prefill: int = 0  # prompt tokens processed to sample from (forward)
    generated: int = 0  # sampled tokens (forward)
    trained: int = 0  # tokens through forward + backward
    reference: int = 0  # tokens through the frozen reference's forward (GRPO's KL term)

    @property
    def fte(self) -> int:
        return self.prefill + self.generated + self.reference + 3 * self.trained

    def as_dict(self) -> dict:
        return {"prefill": self.prefill, "generated": self.generated, "trained": self.trained,
                "reference": self.reference, "fte": self.fte}


def sft_compute(data_path: Path, cfg, tok) -> Compute:
    """Replay the sft stage's example building and seeded batch draws (pipeline/sft.py, r1kit.sft.train)."""
    from r1kit.pipeline import data

    chats = data.read_chat_jsonl(data_path)
    random.Random(cfg.seed).shuffle(chats)
    n_eval = int(len(chats) * cfg.eval_frac) if len(chats) >= 20 else 0
    train_ex = [ex for c in chats[n_eval:] for ex in data.encode_chat(tok, c, cfg.max_len)]
    rows = data.pack(train_ex, cfg.pack_len, cfg.seed) if cfg.pack else train_ex
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    rng = random.Random(cfg.seed)
    tokens = sum(len(ids) for _ in range(steps) for ids, _ in rng.sample(rows, min(cfg.batch_size, len(rows))))
    return Compute(trained=tokens)


def step_prompts(cfg, tok, step: int) -> list[int]:
    """Prompt lengths of one GRPO step of an rl stage (pipeline/rl.py picks them from (seed, step))."""
    from r1kit.pipeline.rl import _batch
    from r1kit.tasks import ChatTask, get_task, prompt_ids

    task = get_task(cfg.task, "train", **cfg.task_kw)
    view = ChatTask(task) if cfg.template == "r1" else task
    examples = _batch(task, [], cfg.grpo.prompts_per_step, 0.0, random.Random(cfg.grpo.seed * 1_000_003 + step))
    return [len(prompt_ids(tok, view, ex, cfg.template)) for ex in examples]


def rl_compute(cfg, tok, rows: list[dict]) -> Compute:
    """An rl stage's compute from its metrics.jsonl rows (completion lengths) and its replayed prompts."""
    g, c = cfg.grpo, Compute()
    if g.mu > 1 or g.mini_batches > 1:
        raise ValueError("the accounting assumes mu = mini_batches = 1 (no old-policy pass)")
    for r in rows:
        prompts = step_prompts(cfg, tok, r["step"])
        completion = round(r["length_mean"] * len(prompts) * g.group_size)
        seq = g.group_size * sum(prompts) + completion
        c.prefill += sum(prompts)
        c.generated += completion
        c.trained += seq
        c.reference += seq if g.beta else 0
    return c


def rl_step_cost(cfg, prompt_len: float, completion_len: float) -> float:
    """Expected FTE of one GRPO step (the formula of rl_compute with mean lengths)."""
    g = cfg.grpo
    n = g.prompts_per_step * g.group_size
    seq = n * (prompt_len + completion_len)
    return g.prompts_per_step * prompt_len + n * completion_len + (3 + (1 if g.beta else 0)) * seq


def mean_prompt_len(cfg, tok, n: int = 256) -> float:
    from r1kit.tasks import ChatTask, get_task, prompt_ids

    task = get_task(cfg.task, "train", **cfg.task_kw)
    view = ChatTask(task) if cfg.template == "r1" else task
    return statistics.mean(len(prompt_ids(tok, view, task[i], cfg.template)) for i in range(min(n, len(task))))


def sampled(model_dir: Path, task_kw: dict, split: str, k: int, problems: int, temperature: float, top_p: float,
            max_new_tokens: int, seed: int, template: str = "") -> tuple[float, float, float]:
    """-> (pass@1, pass@k, mean completion tokens) of a pipeline model on `problems` items of the arith task, under
    `template` (default: the model's own)."""
    from r1kit.eval.heldout import held_out, sample
    from r1kit.pipeline import modelio
    from r1kit.tasks import ChatTask, get_task

    model, tok, meta = modelio.load(model_dir)
    template = template or meta["template"]
    task = get_task("arith", split, **task_kw)
    examples = held_out(task, problems, seed)
    scorer = ChatTask(task) if template == "r1" else task
    ss = sample(model, tok, task, examples, k, template, temperature, top_p, max_new_tokens, seed=seed)
    ok = [scorer.evaluate(s.example, s.text) for s in ss]
    pass_k = sum(max(ok[i * k:(i + 1) * k]) for i in range(len(examples))) / len(examples)
    return sum(ok) / len(ok), pass_k, sum(s.tokens for s in ss) / len(ss)


def mean_sd(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": xs}


def main(argv=None) -> dict:
    import yaml

    from r1kit.pipeline import load_recipe, run_pipeline
    from r1kit.pipeline.config import from_dict
    from r1kit.pipeline.rl import RLStageConfig
    from r1kit.pipeline.runner import StageSpec
    from r1kit.pipeline.sft import SFTStageConfig
    from r1kit.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/distill-vs-rl-tiny.yaml"))
    ap.add_argument("--run-dir", default="runs/distill-vs-rl")
    ap.add_argument("--seeds", type=int, nargs="*", help="default: the recipe's defaults.seeds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    recipe = load_recipe(args.recipe)
    d = yaml.safe_load(Path(args.recipe).read_text())["defaults"]
    seeds = args.seeds if args.seeds is not None else d["seeds"]
    run_dir = Path(args.run_dir)
    ev = recipe.eval
    log = lambda s: print(s, flush=True)

    def stage(name, kind, inputs, config):
        recipe.stages.append(StageSpec(name=name, kind=kind, inputs=inputs, config=config))

    def run():
        return {r.name: r for r in run_pipeline(recipe, run_dir, log=log)}

    # 1. teacher, distillation data, student base, and each seed's distillation run
    sft_cfgs = {s: d["student_sft"] | {"seed": s} for s in seeds}
    for s in seeds:
        stage(f"distill_s{s}", "sft", {"model": "student_base", "data": "distill_data"}, sft_cfgs[s])
    recs = run()
    tok = Tokenizer.from_file(Path(recs["student_base"].outputs["model"]))
    data_path = Path(recs["distill_data"].outputs["data"])
    budget = {s: sft_compute(data_path, from_dict(SFTStageConfig, sft_cfgs[s]), tok) for s in seeds}

    # 2. RL steps from the budget: mean prompt length of the task, mean completion length of the starting model
    #    (sampled at the RL temperature on training items)
    rl_base = from_dict(RLStageConfig, d["student_rl"])
    p_len = mean_prompt_len(rl_base, tok)
    sample_kw = {"split": "train", "k": rl_base.grpo.group_size, "problems": rl_base.grpo.prompts_per_step * 4,
                 "temperature": rl_base.grpo.temperature, "top_p": rl_base.grpo.top_p,
                 "max_new_tokens": rl_base.grpo.max_new_tokens, "seed": 99}
    c_len = {"student_base": sampled(recs["student_base"].outputs["model"], rl_base.task_kw, template="r1",
                                     **sample_kw)[2]}
    for s in seeds:
        c_len[f"distill_s{s}"] = sampled(recs[f"distill_s{s}"].outputs["model"], rl_base.task_kw, **sample_kw)[2]
    planned = {}
    for s in seeds:
        for start, mult, name in ([("student_base", m, f"rl_{m}x_s{s}") for m in d["rl_multiples"]]
                                  + [(f"distill_s{s}", 1, f"distill_rl_s{s}")]):
            steps = max(1, round(mult * budget[s].fte / rl_step_cost(rl_base, p_len, c_len[start])))
            cfg = json.loads(json.dumps(d["student_rl"]))
            cfg["grpo"] |= {"steps": steps, "seed": s}
            planned[name] = (mult, s, cfg)
            stage(name, "rl", {"model": start}, cfg)
    recs = run()

    # 3. measure: the compute each RL run used, pass@1 of every arm, pass@8 of the bases on the hard items
    from r1kit.rl.trainer import read_metrics

    used, correct = {}, {}
    for name, (mult, s, cfg) in planned.items():
        rows = read_metrics(run_dir / name / "metrics.jsonl", 10 ** 9)
        used[name] = rl_compute(from_dict(RLStageConfig, cfg), tok, rows)
        n = rl_base.grpo.prompts_per_step * rl_base.grpo.group_size
        correct[name] = sum(round(r["accuracy"] * n) for r in rows)  # rollouts with an accuracy reward: the signal
    held = {"split": "test", "k": 8, "problems": ev["problems"], "temperature": ev["temperature"],
            "top_p": ev["top_p"], "max_new_tokens": ev["max_new_tokens"], "seed": ev.get("seed", 1234)}
    # the student base under the chat template (the runner evaluated it under r1-zero, the template it was saved with;
    # RL and distillation both use r1); the teacher (the model the distillation data came from) under its own
    teacher = next(st for st in recipe.stages if st.name == "distill_data").inputs["model"]
    p = {"student_base": sampled(recs["student_base"].outputs["model"], ev["task_kw"], template="r1", **held),
         "teacher": sampled(recs[teacher].outputs["model"], ev["task_kw"], **held)}
    arms = {"distill": [f"distill_s{s}" for s in seeds], "distill_rl": [f"distill_rl_s{s}" for s in seeds]}
    arms |= {f"rl_{m}x": [f"rl_{m}x_s{s}" for s in seeds] for m in d["rl_multiples"]}
    out = {"bench": "distill_vs_rl", "recipe": recipe.source, "seeds": seeds, "eval": ev,
           "teacher": {"stage": teacher, "pass@1": recs[teacher].eval["pass@1"], "pass@8": p["teacher"][1],
                       "template": recs[teacher].eval["template"], "distill_rows": recs["distill_data"].metrics["rows"],
                       "params": recs["teacher_base"].metrics.get("params")},
           "student_base": {"pass@1": recs["student_base"].eval["pass@1"], "pass@1_r1": p["student_base"][0],
                            "pass@8": p["student_base"][1], "params": recs["student_base"].metrics.get("params")},
           "teacher_sampling_tokens": _teacher_tokens(data_path),
           "budget_fte": {s: budget[s].fte for s in seeds}, "arms": {}}
    for arm, names in arms.items():
        fte = [budget[int(n.rsplit("_s", 1)[1])].fte if arm == "distill" else used[n].fte for n in names]
        out["arms"][arm] = {
            "pass@1": mean_sd([recs[n].eval["pass@1"] for n in names]),
            "compute_fte": fte,
            "compute_vs_budget": [f / budget[int(n.rsplit("_s", 1)[1])].fte for f, n in zip(fte, names)],
            "steps": [recs[n].metrics.get("steps") for n in names],
            "correct_rollouts": [correct.get(n) for n in names],
            "length": statistics.mean(recs[n].eval["length"] for n in names),
            "cpu_s": sum(recs[n].cpu_seconds for n in names)}
    out |= {"wall_s": time.time() - t0, "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "torch": torch.__version__, "threads": args.threads}
    _table(out, log)
    print(json.dumps(out, default=float))
    return out


def _teacher_tokens(data_path: Path) -> int:
    """Tokens the teacher generated for the distillation data (its own tokenizer), from the data stage's shards."""
    shards = Path(data_path).parent / "shards"
    return sum(json.loads(line)["tokens"] for f in shards.glob("*.jsonl") for line in f.read_text().splitlines())


def _table(out: dict, log) -> None:
    log(f"\nteacher pass@1 {out['teacher']['pass@1']:.3f} pass@8 {out['teacher']['pass@8']:.3f}; student base "
        f"pass@1 {out['student_base']['pass@1_r1']:.3f} pass@8 {out['student_base']['pass@8']:.3f} (hard items, r1 template)")
    log(f"{'arm':<12} {'pass@1 mean +- std':<22} {'runs':<24} {'compute / budget':<20} {'steps':<18} correct rollouts")
    for arm, a in out["arms"].items():
        p = a["pass@1"]
        log(f"{arm:<12} {p['mean']:.3f} +- {p['std']:.3f}{'':<8} {' '.join(f'{x:.3f}' for x in p['runs']):<24} "
            f"{' '.join(f'{x:.2f}' for x in a['compute_vs_budget']):<20} {a['steps']!s:<18} {a['correct_rollouts']}")


if __name__ == "__main__":
    main()
