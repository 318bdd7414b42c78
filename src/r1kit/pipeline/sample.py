"""Stages `sample` (rejection sampling) and `coldstart` (cold-start data): draw k samples per prompt from a model,
keep the correct and readable ones, reformat them into R1's output pattern, dedupe, decontaminate, mix in
non-reasoning chats, and write a versioned chat jsonl with stats.

The two stages are one function with different defaults. Cold start (R1 stage 1) samples an R1-Zero checkpoint
(or any model) at T=1 and keeps one readable correct sample per prompt; rejection sampling (R1 stage 3) keeps up to
`max_per_prompt` distinct correct samples per prompt and adds non-reasoning data. Distillation data is a `sample`
stage on the final teacher. Every sample's fate is counted in the stats: truncated, incorrect, no_answer, the
readability filter it failed (filters.py), duplicate, contaminated, over the per-prompt cap, or kept.

Resume: prompts are processed in shards of `shard_prompts`; each finished shard is a file `shards/KEY.jsonl`, and a
re-run after a crash samples only the missing shards (seeds derive from the prompt index, so shards agree). KEY is a
sha256 over everything that determines the shard's rows: the model folder's bytes, its prompt template, the task and
its arguments, the shard's own questions and answers (so the data file and the prompt choice), k, temperature,
top-p, the token limit, the seed and the readability filters. A re-run with any other setting into the same folder
samples afresh; it never relabels another run's samples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.pipeline.config import file_field
from r1kit.pipeline.filters import FilterConfig


@dataclass
class SampleConfig:
    task: str = "arith-mix"
    task_kw: dict = field(default_factory=dict)
    prompts: int = 300  # training prompts to sample
    k: int = 4  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_per_prompt: int = 2  # distinct kept samples per prompt
    filters: FilterConfig = field(default_factory=FilterConfig)
    decontam_n: int = 13  # n-gram size against the eval sets (0 = off); 13 as GPT-3, so short questions match whole
    benchmarks: bool = True  # include the benchmark files (data/) in the eval sets (plus the task's test split)
    general: str = file_field()  # non-reasoning chats jsonl; "" = the built-in set
    general_frac: float = 0.1  # share of non-reasoning chats in the output (0 = none)
    shard_prompts: int = 64
    name: str = "data"  # output file stem: NAME-vN.jsonl
    seed: int = 0


@dataclass
class ColdStartConfig(SampleConfig):
    """Cold start: one readable correct sample per prompt, reasoning data only."""
    max_per_prompt: int = 1
    general_frac: float = 0.0
    name: str = "coldstart"


def _shard(model, tok, template, task, examples, cfg: SampleConfig, first: int, engine, offset: int = 0) -> list[dict]:
    """Sample and judge one shard of prompts -> one record per sample (kept or with the reason it was dropped).
    offset: the index of examples[0] in the shard when a rank samples a share of it (seeds stay per prompt)."""
    from r1kit.eval.heldout import sample
    from r1kit.pipeline.filters import readability, reformat
    from r1kit.tasks import ChatTask
    from r1kit.rewards import chain_of_thought

    scorer = ChatTask(task) if template == "r1" else task
    out = []
    for s in sample(model, tok, task, examples, cfg.k, template, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                    seed=cfg.seed * 1_000_003 + first * cfg.k, engine=engine, first=offset):
        ex, lang = s.example, s.example.meta.get("lang") or "en"
        message, reason = None, None
        if s.truncated:
            reason = "truncated"
        elif not scorer.evaluate(ex, s.text):
            reason = "incorrect"
        else:
            reason = readability(chain_of_thought(s.text), lang, cfg.filters)
            if reason is None:
                message = reformat(s.text, template, lang)
                reason = None if message else "no_answer"
        out.append({"question": ex.question, "answer": ex.answer, "lang": lang, "text": s.text,
                    "tokens": s.tokens, "reason": reason, "message": message})
    return out


def model_sha256(folder: Path) -> str:
    """sha256 over the names and bytes of every file in a model folder (weights, config, tokenizer, template)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder).as_posix()}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def shard_key(model_hash: str, template: str, cfg: SampleConfig, examples, first: int) -> str:
    """The name of a shard's file: a hash of everything its rows depend on (see the module docstring)."""
    blob = {"model": model_hash, "template": template, "task": cfg.task, "task_kw": cfg.task_kw,
            "examples": [[ex.question, str(ex.answer)] for ex in examples], "first": first, "k": cfg.k,
            "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
            "seed": cfg.seed, "filters": dataclasses.asdict(cfg.filters)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def build(model_path: Path, cfg: SampleConfig, out: Path, log=print) -> tuple[Path, dict]:
    """Sample, judge, dedupe, decontaminate and mix; write out/NAME-vN.jsonl (+ .stats.json) -> (path, stats).

    Under torchrun every rank calls this: each samples a contiguous share of every missing shard's prompts (seeds
    per prompt, so the rows equal one process's), rank 0 gathers and writes the shard, then alone filters, mixes
    and writes the data; every rank returns its (path, stats)."""
    from r1kit.engine.engine import Engine
    from r1kit.pipeline import modelio
    from r1kit.tasks import get_task
    from r1kit.train import dist

    model, tok, meta = modelio.load(model_path)
    template = meta["template"]
    task = get_task(cfg.task, "train", **cfg.task_kw)
    idx = random.Random(cfg.seed).sample(range(len(task)), min(cfg.prompts, len(task)))
    shard_dir = out / "shards"
    dist.on_main(lambda: shard_dir.mkdir(parents=True, exist_ok=True))
    engine = Engine(model, tok, max_batch=min(256, 32 * cfg.k))
    model_hash = dist.on_main(lambda: model_sha256(model_path))
    keys = []
    for first in range(0, len(idx), cfg.shard_prompts):
        examples = [task[i] for i in idx[first:first + cfg.shard_prompts]]
        keys.append(shard_key(model_hash, template, cfg, examples, first))
        path = shard_dir / f"{keys[-1]}.jsonl"
        if not dist.on_main(path.exists):  # decided once: every rank samples, or none does
            mine, offset = dist.share(examples)
            rows = dist.gather_lists(_shard(model, tok, template, task, mine, cfg, first, engine, offset)
                                     if mine else [])
            dist.on_main(lambda: _write_shard(path, rows, log, f"  sampled prompts {first}.."
                                              f"{min(first + cfg.shard_prompts, len(idx))} of {len(idx)}"))
    return dist.on_main(lambda: _assemble([shard_dir / f"{k}.jsonl" for k in keys], model_path, model_hash,
                                          template, cfg, idx, keys, out))


def _write_shard(path: Path, rows: list[dict], log, line: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)
    log(line)


def _assemble(paths: list[Path], model_path: Path, model_hash: str, template: str, cfg: SampleConfig, idx: list,
              keys: list[str], out: Path) -> tuple[Path, dict]:
    """The sampled shards -> judged, deduped, decontaminated and mixed rows in out/NAME-vN.jsonl, and the stats."""
    from r1kit.pipeline import data
    from r1kit.pipeline.decontam import eval_index
    from r1kit.tasks import chat_examples, get_task

    records = [json.loads(line) for p in paths for line in p.read_text().splitlines()]
    index = None
    if cfg.decontam_n:
        index = eval_index(cfg.decontam_n, [get_task(cfg.task, "test", **cfg.task_kw)],
                           None if cfg.benchmarks else [])
    counts: Counter = Counter(r["reason"] or "kept" for r in records)
    counts["kept"] = 0
    rows, seen, per_prompt = [], set(), Counter()
    for r in records:
        if r["reason"] is not None:
            continue
        why = None
        if (r["question"], r["message"]) in seen:
            why = "duplicate"
        elif per_prompt[r["question"]] >= cfg.max_per_prompt:
            why = "over_cap"
        elif index is not None and index.contaminated(r["question"]):
            why = "contaminated"
        seen.add((r["question"], r["message"]))
        if why:
            counts[why] += 1
            continue
        per_prompt[r["question"]] += 1
        counts["kept"] += 1
        rows.append({"messages": [{"role": "user", "content": r["question"]},
                                  {"role": "assistant", "content": r["message"]}],
                     "meta": {"kind": "reasoning", "task": cfg.task, "answer": r["answer"], "lang": r["lang"]}})
    n_general = 0
    if cfg.general_frac > 0:
        pool = []
        for ex in chat_examples(cfg.general):
            if index is not None and index.contaminated(ex.question):
                counts["general_contaminated"] += 1
            else:
                pool.append(ex)
        random.Random(cfg.seed).shuffle(pool)
        want = round(cfg.general_frac / (1 - cfg.general_frac) * len(rows)) if pool else 0
        for i in range(want):
            ex = pool[i % len(pool)]
            rows.append({"messages": ex.meta["messages"] + [{"role": "assistant", "content": ex.answer}],
                         "meta": {"kind": "general", "lang": ex.meta["lang"]}})
        n_general = want
    random.Random(cfg.seed + 1).shuffle(rows)
    kept_tokens = [r["tokens"] for r in records if r["reason"] is None]
    stats = {"source_model": str(model_path), "model_sha256": model_hash, "template": template, "task": cfg.task,
             "task_kw": cfg.task_kw, "k": cfg.k, "temperature": cfg.temperature, "top_p": cfg.top_p,
             "seed": cfg.seed, "shards": keys, "prompts": len(idx),
             "samples": len(records), "counts": dict(counts), "reasoning_rows": counts["kept"],
             "general_rows": n_general, "prompts_covered": len(per_prompt),
             "mean_kept_tokens": sum(kept_tokens) / max(len(kept_tokens), 1),
             "eval_texts_indexed": index.texts if index else 0}
    path = data.write_versioned(out, cfg.name, rows, stats)
    return path, stats


def run(cfg: SampleConfig, inputs: dict, out: Path, ctx):
    from r1kit.pipeline.runner import StageResult

    path, stats = build(inputs["model"], cfg, out, ctx.log)
    c = stats["counts"]
    ctx.log(f"  kept {c.get('kept', 0)} of {stats['samples']} samples ({stats['general_rows']} non-reasoning rows "
            f"added): " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "kept"))
    metrics = {"rows": stats["reasoning_rows"] + stats["general_rows"], "kept": c.get("kept", 0),
               "samples": stats["samples"], "yield": c.get("kept", 0) / max(stats["samples"], 1)}
    metrics |= {f"dropped_{k}": v for k, v in c.items() if k != "kept"}
    return StageResult({"data": str(path.relative_to(out))}, metrics)
