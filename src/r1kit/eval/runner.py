"""The eval loop: prompts -> sampler -> scores -> per-sample records -> metrics -> reports. Resumable.

    report = run_eval(sampler, get_bench("aime24"), RunConfig(k=64), out_dir="runs/eval/r1-1.5b")

Files in out_dir (NAME = the benchmark's name):
    NAME.samples.jsonl   one record per sample, appended as chunks finish (the resume state)
    NAME.report.json     metrics, settings, verifier, per-problem counts
    NAME.report.md       the same for people

Resume: a sample is done when a record with its (problem id, sample index, params hash) exists and did not fail at
the sampler (finish_reason "error"). The params hash covers the benchmark data, the model, the template, temperature,
top-p, max_new_tokens and the seed, but not k or --limit: raising k or the limit reuses every sample already drawn.
Sample j of a problem is drawn with seed `problem_seed + j`, where problem_seed derives from (seed, problem id), so
a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from r1kit.errors import R1kitError, file_error
from r1kit.eval.benchmarks import Bench, Item, check_template
from r1kit.eval.metrics import cons_at_k, mean_stderr, pass_at_k, pass_ks
from r1kit.eval.samplers import GenParams, Sampler, SampleRequest

log = logging.getLogger(__name__)

R1_MAX_NEW_TOKENS = 32768
TRUNCATION_POLICY = ("a sample is truncated when it has no answer section (no </think>: scored 0) or stopped at the "
                     "length limit (finish_reason 'length'; its answer section, if any, is still scored)")


@dataclass(frozen=True)
class RunConfig:
    k: int = 64
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = R1_MAX_NEW_TOKENS
    seed: int = 0
    template: str = "r1"
    limit: int = 0  # first N problems (0 = all)
    chunk_samples: int = 64  # samples per sampler call (records are written after each)

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise R1kitError(f"k must be an integer >= 1, got {self.k!r}")
        if self.limit < 0:
            raise R1kitError(f"limit must be >= 0 (0 = all problems), got {self.limit}")
        check_template(self.template)
        GenParams(self.temperature, self.top_p, self.max_new_tokens)  # validates


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def params_hash(bench: Bench, sampler_info: dict, cfg: RunConfig) -> str:
    return _sha({"bench": bench.name, "data": bench.fingerprint, "model": sampler_info.get("model"),
                 "weights": sampler_info.get("weights"), "sampler": sampler_info.get("name"),
                 "template": cfg.template, "temperature": cfg.temperature,
                 "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed})[:16]


def problem_seed(seed: int, problem_id: str) -> int:
    """Base seed of a problem; sample j uses problem_seed + j (kept below 2**62 for the engine's generators)."""
    return int(hashlib.sha256(f"{seed}:{problem_id}".encode()).hexdigest()[:12], 16) % (2**47)


def read_records(path: Path) -> list[dict]:
    """Records of a samples file. A malformed LAST line (a run killed mid-write) is dropped with a warning; a
    malformed line elsewhere is an error naming its line number."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if lineno == len(lines):
                log.warning("%s: dropping a partial last line %d (interrupted run)", path, lineno)
                continue
            raise file_error(path, f"line {lineno}: not a sample record ({e})") from None
        out.append(rec)
    return out


def repair_tail(path: Path) -> None:
    """Cut a partial last line (a run killed mid-write) so appended records start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: removing a partial last line (interrupted run)", path)
        with open(path, "r+b") as f:
            f.truncate(keep)


def run_eval(sampler: Sampler, bench: Bench, cfg: RunConfig, out_dir: str | Path, echo=print) -> dict:
    """Sample, score, record and report one benchmark; returns the report dict (also written to out_dir)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / f"{bench.name}.samples.jsonl"
    info = sampler.info()
    phash = params_hash(bench, info, cfg)
    gen = GenParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    items = bench.items()
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise R1kitError(f"{bench.name}: no problems to evaluate")
    verifier = bench.verifier_info()
    if cfg.max_new_tokens < 4096:
        echo(f"warning: max_new_tokens={cfg.max_new_tokens} is far below the R1 protocol's {R1_MAX_NEW_TOKENS}; "
             f"reasoning models will be truncated (truncation is reported)")

    repair_tail(samples_path)
    done = {(r.get("problem_id"), r.get("sample_index")) for r in read_records(samples_path)
            if r.get("params_hash") == phash and r.get("finish_reason") != "error"}
    todo: list[tuple[Item, list[int]]] = []
    for it in items:
        missing = [j for j in range(cfg.k) if (it.id, j) not in done]
        if missing:
            todo.append((it, missing))
    n_total, n_todo = len(items) * cfg.k, sum(len(m) for _, m in todo)
    echo(f"{bench.name}: {len(items)} problems x k={cfg.k} = {n_total} samples; {n_total - n_todo} already done, "
         f"{n_todo} to sample (params {phash})")

    t0, n_new = time.time(), 0
    chunk: list[tuple[Item, list[int]]] = []
    size = 0
    for job in todo + [None]:  # None flushes the last chunk
        if job is not None:
            chunk.append(job)
            size += len(job[1])
            if size < cfg.chunk_samples:
                continue
        if not chunk:
            break
        n_new += _run_chunk(sampler, bench, cfg, gen, chunk, phash, info, verifier, samples_path)
        echo(f"  {n_new}/{n_todo} samples ({time.time() - t0:.1f}s)")
        chunk, size = [], 0

    records = [r for r in read_records(samples_path) if r.get("params_hash") == phash]
    report = summarize(bench, items, records, cfg, info, verifier, phash)
    report["elapsed_s"] = round(time.time() - t0, 2)
    report["new_samples"] = n_new
    (out / f"{bench.name}.report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (out / f"{bench.name}.report.md").write_text(markdown_report(report), "utf-8")
    report["files"] = {"samples": str(samples_path), "json": str(out / f"{bench.name}.report.json"),
                       "markdown": str(out / f"{bench.name}.report.md")}
    return report


def _run_chunk(sampler, bench, cfg, gen, chunk, phash, info, verifier, samples_path) -> int:
    reqs, prompts = [], []
    for it, idx in chunk:
        prompt = bench.prompt(it, cfg.template)
        base = problem_seed(cfg.seed, it.id)
        reqs.append(SampleRequest(prompt, [base + j for j in idx]))
        prompts.append(prompt)
    outs = sampler.sample(reqs, gen)
    flat = [(it, j, c, p) for (it, idx), comps, p in zip(chunk, outs, prompts) for j, c in zip(idx, comps)]
    scores = bench.score([it for it, _, _, _ in flat], [c.text for _, _, c, _ in flat])
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = []
    for (it, j, c, prompt), s in zip(flat, scores):
        if c.finish_reason == "error":
            verdict, details = "error", c.error or "sampler error"
        else:
            verdict, details = s.verdict, s.details
        answered = "</think>" in c.text and c.finish_reason != "error"
        rec = {
            "bench": bench.name, "problem_id": it.id, "sample_index": j, "params_hash": phash,
            "prompt_hash": _sha({"prompt": prompt, "template": cfg.template})[:16],
            "seed": problem_seed(cfg.seed, it.id) + j,
            "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                         "template": cfg.template},
            "model": info.get("model"), "sampler": info.get("name"),
            "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens, "think_tokens": c.think_tokens,
            "answer_tokens": c.answer_tokens, "answered": answered,
            "truncated": (not answered) or c.finish_reason == "length",
            "text": c.text, "answer": s.answer, "gold": it.example.answer if bench.kind != "code" else None,
            "verdict": verdict, "correct": int(verdict == "pass"), "details": details,
            "verifier": verifier, "time": now,
        }
        lines.append(json.dumps(rec, ensure_ascii=False))
    with open(samples_path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
    return len(lines)


def summarize(bench: Bench, items: list[Item], records: list[dict], cfg: RunConfig, info: dict, verifier: dict,
              phash: str) -> dict:
    """Metrics over the first k samples of every problem (the latest record of each sample wins)."""
    latest: dict[tuple[str, int], dict] = {}
    for r in records:
        if r.get("sample_index", cfg.k) < cfg.k:
            latest[(r["problem_id"], r["sample_index"])] = r
    eq = bench.equivalence()
    per_problem, p1, cons, samples = [], [], [], []
    for it in items:
        recs = [latest[(it.id, j)] for j in range(cfg.k) if (it.id, j) in latest]
        if not recs:
            continue
        samples += recs
        n, c = len(recs), sum(r["correct"] for r in recs)
        row = {"id": it.id, "n": n, "correct": c, "pass@1": c / n}
        p1.append(c / n)
        if eq is not None:
            ok, answer = cons_at_k([r.get("answer") for r in recs], [bool(r["correct"]) for r in recs], eq)
            row["cons"], row["cons_answer"] = int(ok), answer
            cons.append(float(ok))
        per_problem.append(row)
    if not per_problem:
        raise R1kitError(f"{bench.name}: no scored samples to report")
    m, se = mean_stderr(p1)
    metrics: dict = {"pass@1": m, "pass@1_stderr": se}
    for k in pass_ks(cfg.k):
        vals = [pass_at_k(r["n"], r["correct"], k) for r in per_problem if r["n"] >= k]
        if vals and k > 1:
            metrics[f"pass@{k}"] = sum(vals) / len(vals)
    if cons:
        cm, cse = mean_stderr(cons)
        metrics[f"cons@{cfg.k}"], metrics[f"cons@{cfg.k}_stderr"] = cm, cse
    n_s = len(samples)

    def mean_of(key):
        vals = [r[key] for r in samples if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    metrics.update({
        "truncation_rate": sum(r["truncated"] for r in samples) / n_s,
        "length_stop_rate": sum(r["finish_reason"] == "length" for r in samples) / n_s,
        "unanswered_rate": sum(not r["answered"] for r in samples) / n_s,
        "mean_think_tokens": mean_of("think_tokens"),
        "mean_answer_tokens": mean_of("answer_tokens"),
        "sampler_errors": sum(r["finish_reason"] == "error" for r in samples),
        "verdicts": {v: sum(r["verdict"] == v for r in samples) for v in ("pass", "fail", "timeout", "error")},
    })
    incomplete = [r["id"] for r in per_problem if r["n"] < cfg.k]
    return {
        "bench": bench.name, "kind": bench.kind, "data": bench.fingerprint, "n_problems": len(per_problem),
        "k": cfg.k, "n_samples": n_s, "params_hash": phash, "metrics": metrics,
        "settings": {**asdict(cfg), "system_prompt": None, "sampler": info},
        "verifier": verifier, "truncation_policy": TRUNCATION_POLICY,
        "cons_policy": "answers clustered by verifier equivalence, the empty answer is its own cluster; ties go to "
                       "the cluster whose first member appears earliest",
        "incomplete_problems": incomplete, "per_problem": per_problem,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _fmt(x, pct=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.2f}" if pct else f"{x:.1f}"


def markdown_report(rep: dict) -> str:
    m, k, s = rep["metrics"], rep["k"], rep["settings"]
    lines = [f"# {rep['bench']}: {s['sampler'].get('model')}", "",
             f"{rep['n_problems']} problems, k = {k} samples each ({rep['n_samples']} samples), params "
             f"`{rep['params_hash']}`.", "", "| metric | value |", "|---|---|",
             f"| pass@1 (mean over k, ± stderr over problems) | {_fmt(m['pass@1'])} ± {_fmt(m['pass@1_stderr'])} |"]
    for key, val in m.items():
        if key.startswith("pass@") and key not in ("pass@1", "pass@1_stderr"):
            lines.append(f"| {key} (unbiased) | {_fmt(val)} |")
    if f"cons@{k}" in m:
        lines.append(f"| cons@{k} (majority vote) | {_fmt(m[f'cons@{k}'])} ± {_fmt(m[f'cons@{k}_stderr'])} |")
    lines += [f"| truncation rate | {_fmt(m['truncation_rate'])} |",
              f"| unanswered rate (no `</think>`) | {_fmt(m['unanswered_rate'])} |",
              f"| stopped at the length limit | {_fmt(m['length_stop_rate'])} |",
              f"| mean think tokens | {_fmt(m['mean_think_tokens'], False)} |",
              f"| mean answer tokens | {_fmt(m['mean_answer_tokens'], False)} |",
              f"| sampler errors | {m['sampler_errors']} |", "",
              "Percentages. Settings: " + ", ".join(f"{key}={s[key]}" for key in
                                                   ("temperature", "top_p", "max_new_tokens", "seed", "template")) +
              ", no system prompt.", "",
              f"Sampler: `{json.dumps(s['sampler'])}`", "",
              f"Verifier: {rep['verifier']['name']} {rep['verifier']['version']}, config "
              f"`{json.dumps(rep['verifier']['config'], ensure_ascii=False)}`", "",
              f"Truncation: {rep['truncation_policy']}.", "", f"Majority vote: {rep['cons_policy']}.", ""]
    if rep["incomplete_problems"]:
        lines += [f"Incomplete (fewer than k samples): {', '.join(rep['incomplete_problems'][:20])}", ""]
    rows = rep["per_problem"]
    lines += ["## Per problem", "", "| id | correct / n | cons |", "|---|---|---|"]
    for r in rows[:200]:
        cons = "" if "cons" in r and r["cons"] is None else ("yes" if r.get("cons") else "no" if "cons" in r else "-")
        lines.append(f"| {r['id']} | {r['correct']} / {r['n']} | {cons} |")
    if len(rows) > 200:
        lines.append(f"| ... | {len(rows) - 200} more in the JSON report | |")
    return "\n".join(lines) + "\n"


__all__ = ["RunConfig", "markdown_report", "params_hash", "problem_seed", "read_records", "repair_tail", "run_eval",
           "summarize"]
