"""Sampling k completions per prompt with the engine, and the per-stage evaluation the report shows.

`sample(...)` is shared by evaluation, cold-start data and rejection sampling. `evaluate_model` reports, over the
held-out problems of a task: pass@1 (mean over k samples, the R1 protocol), mean response length in tokens, the
strict format rate of the model's template, and language consistency (R1-v2 Eq. 7, averaged over samples whose
chain of thought has words).
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
           max_new_tokens: int, seed: int = 0, engine=None, chunk: int = 32) -> list[Sample]:
    """k samples per example (prompt-major), `chunk` prompts per engine call."""
    from r1kit.engine.engine import Engine
    from r1kit.engine.sampling import SamplingParams

    engine = engine or Engine(model.eval(), tok, max_batch=min(256, chunk * k))
    out = []
    for c in range(0, len(examples), chunk):
        part = examples[c:c + chunk]
        prompts = [prompt_ids(tok, task, ex, template) for ex in part]
        params = [SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                 stop_token_ids=[tok.eos_id], seed=seed + (c + i) * k) for i in range(len(part))]
        for i, r in enumerate(engine.generate(prompts, params, n=k)):
            out.append(Sample(part[i // k], tok.decode(r.token_ids, skip_special_tokens=True), len(r.token_ids),
                              r.finish_reason == "length"))
    return out


def evaluate_model(model, tok, template: str, cfg: EvalConfig) -> dict:
    from r1kit.rewards import chain_of_thought, format_ok, format_r1_ok, language_consistency

    task = get_task(cfg.task, "test", **cfg.task_kw)
    idx = random.Random(cfg.seed).sample(range(len(task)), min(cfg.problems, len(task)))
    examples = [task[i] for i in idx]
    scorer = ChatTask(task) if template == "r1" else task
    samples = sample(model, tok, task, examples, cfg.k, template, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                     cfg.seed)
    fmt = format_r1_ok if template == "r1" else format_ok
    langs = [language_consistency(chain_of_thought(s.text), s.example.meta.get("lang") or "en") for s in samples]
    scored = [x for x in langs if x is not None]
    return {"pass@1": sum(scorer.evaluate(s.example, s.text) for s in samples) / len(samples),
            "length": sum(s.tokens for s in samples) / len(samples),
            "format": sum(fmt(s.text) for s in samples) / len(samples),
            "lang_consistency": sum(scored) / len(scored) if scored else float("nan"),
            "truncated": sum(s.truncated for s in samples) / len(samples),
            "template": template, "sample": samples[0].text}


def evaluate_path(model_path: str, settings: dict) -> dict:
    """The runner's evaluator: load a pipeline model folder and evaluate it with EvalConfig(**settings)."""
    from r1kit.pipeline.config import from_dict
    from r1kit.pipeline.modelio import load

    model, tok, meta = load(model_path)
    return evaluate_model(model, tok, meta["template"], from_dict(EvalConfig, settings, "eval"))
