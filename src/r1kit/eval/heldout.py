"""The held-out evaluator of training runs: `r1kit zero`, every pipeline stage and the RL loop's periodic checks.

`sample(...)` is shared by evaluation, cold-start data and rejection sampling. `evaluate_examples` reports, over
held-out problems of a task: pass@1 (mean over k samples, the R1 protocol), mean response length in tokens, the
strict format rate of the model's template, the reflective-word rate, the truncated share and language consistency
(R1-v2 Eq. 7, averaged over samples whose chain of thought has words). Benchmarks with the full protocol and a
report are r1kit.eval.runner's job (`r1kit eval`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from r1kit.tasks import ChatTask, get_task, prompt_ids


@dataclass
class EvalConfig:
    task: str = "arith-mix"
    task_kw: dict = field(default_factory=dict)
    problems: int = 100  # held-out problems (test split)
    k: int = 2  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 64
    seed: int = 1234


@dataclass
class Sample:
    example: object  # r1kit.tasks.Example
    text: str  # completion (special tokens dropped; tags kept)
    tokens: int
    truncated: bool


@torch.no_grad()
def sample(model, tok, task, examples, k: int, template: str, temperature: float, top_p: float,
           max_new_tokens: int, seed: int = 0, engine=None, chunk: int = 32, first: int = 0) -> list[Sample]:
    """k samples per example (prompt-major), `chunk` prompts per engine call. `first`: the global index of
    examples[0] when several ranks share a list, so each sample's seed does not depend on the split."""
    from r1kit.engine.engine import Engine
    from r1kit.engine.sampling import SamplingParams

    engine = engine or Engine(model.eval(), tok, max_batch=min(256, chunk * k),
                              max_seq_len=max_new_tokens + max(len(prompt_ids(tok, task, ex, template))
                                                               for ex in examples[:256]) * 2 + 64)
    chunk = max(1, min(chunk, engine.max_batch // k))  # a group of k must fit the engine's rows
    out = []
    for c in range(0, len(examples), chunk):
        part = examples[c:c + chunk]
        prompts = [prompt_ids(tok, task, ex, template) for ex in part]
        params = [SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                 stop_token_ids=[tok.eos_id], seed=seed + (first + c + i) * k)
                  for i in range(len(part))]
        for i, r in enumerate(engine.generate(prompts, params, n=k)):
            out.append(Sample(part[i // k], tok.decode(r.token_ids, skip_special_tokens=True), len(r.token_ids),
                              r.finish_reason == "length"))
    return out


def held_out(task, problems: int, seed: int) -> list:
    """The same `problems` test examples for every evaluation of a run (seeded choice)."""
    idx = random.Random(seed).sample(range(len(task)), min(problems, len(task)))
    return [task[i] for i in idx]


def evaluate_examples(model, tok, task, examples, template: str, cfg: EvalConfig, engine=None) -> dict:
    """The metrics of the module docstring for k samples of each example, with cfg's sampling settings. Under
    torchrun each rank samples a contiguous share of the examples and the per-sample figures are gathered, so the
    numbers equal one process's."""
    from r1kit.rewards import chain_of_thought, format_ok, format_r1_ok, language_consistency, reflection_rate
    from r1kit.train import dist

    mine, first = dist.share(examples)
    scorer = ChatTask(task) if template == "r1" else task
    samples = sample(model, tok, task, mine, cfg.k, template, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                     cfg.seed, engine=engine, first=first) if mine else []
    fmt = format_r1_ok if template == "r1" else format_ok
    rows = []
    for s in samples:
        thought = chain_of_thought(s.text, template)
        rows.append((float(scorer.evaluate(s.example, s.text)), s.tokens, float(fmt(s.text)), reflection_rate(s.text),
                     language_consistency(thought, s.example.meta.get("lang") or "en"), s.truncated, s.text,
                     bool(thought.strip()), s.example.question))
    rows = dist.gather_lists(rows)
    n = len(rows)
    mean = lambda i: sum(r[i] for r in rows) / n  # noqa: E731
    scored = [r[4] for r in rows if r[4] is not None]
    return {"pass@1": mean(0), "length": mean(1), "format": mean(2), "reflection_rate": mean(3),
            "lang_consistency": sum(scored) / len(scored) if scored else float("nan"), "truncated": mean(5),
            "template": template, "sample": rows[0][6], "split": _split(rows),
            # the first sample of the first problems: the same questions at every evaluation of a run
            "samples": [{"question": r[8], "completion": r[6], "correct": bool(r[0])} for r in rows[::cfg.k][:4]]}


def _split(rows) -> dict:
    """Accuracy by behaviour: responses without a thought, thoughts without reflective words, thoughts with some."""
    groups = {"no thought": [], "thought": [], "thought + reflection": []}
    for r in rows:
        groups["no thought" if not r[7] else "thought + reflection" if r[3] else "thought"].append(r[0])
    return {k: {"share": len(v) / max(len(rows), 1), "pass@1": sum(v) / len(v) if v else None}
            for k, v in groups.items()}


def evaluate_model(model, tok, template: str, cfg: EvalConfig) -> dict:
    task = get_task(cfg.task, "test", **cfg.task_kw)
    return evaluate_examples(model, tok, task, held_out(task, cfg.problems, cfg.seed), template, cfg)


def evaluate_path(model_path: str, settings: dict) -> dict:
    """The runner's evaluator: load a pipeline model folder and evaluate it with EvalConfig(**settings)."""
    from r1kit.pipeline.config import from_dict
    from r1kit.pipeline.modelio import load

    model, tok, meta = load(model_path)
    return evaluate_model(model, tok, meta["template"], from_dict(EvalConfig, settings, "eval"))
