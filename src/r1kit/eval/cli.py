"""`r1kit eval`: the R1 evaluation protocol on one benchmark (registered in r1kit/cli.py as "eval")."""

from __future__ import annotations

import re
from pathlib import Path

from r1kit.errors import R1kitError


def default_out_dir(model: str, bench: str) -> str:
    stem = Path(model.rstrip("/")).name or "model"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    return str(Path("runs") / "eval" / stem)


def eval_cmd(model: str, bench: str = "", k: int = 64, limit: int = 0, max_new_tokens: int = 32768,
             temperature: float = 0.6, top_p: float = 0.95, out_dir: str = "", concurrency: int = 8,
             base_url: str = "", seed: int = 0, template: str = "", data: str = "") -> dict:
    """Evaluate a model on a benchmark with the DeepSeek-R1 protocol: k samples per problem, pass@1 ± stderr,
    pass@k, cons@k, truncation and thinking length; resumable (a rerun skips samples already in out_dir).

    Args:
        model: a checkpoint folder, a .gguf file or a preset for the in-process engine; with --base-url, the model
            name the server expects.
        bench: math500, aime24, amc23, gsm8k, minerva, arith, countdown, humaneval, or a .jsonl file (problem and
            answer fields, or HumanEval's prompt/test/entry_point); formats in docs/EVAL.md.
        k: samples per problem (R1: 64; >= 1).
        limit: evaluate only the first N problems (0 = all).
        max_new_tokens: generation budget per sample (R1: 32768), capped by the model's context.
        temperature: sampling temperature (R1: 0.6).
        top_p: nucleus sampling (R1: 0.95).
        out_dir: where samples and reports go (default runs/eval/MODEL_NAME).
        concurrency: sequences decoded together in-process, or HTTP requests in flight.
        base_url: an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) instead of the in-process engine; the
            API key, if any, is read from $OPENAI_API_KEY.
        seed: base seed; sample j of a problem uses a seed derived from (seed, problem id) plus j.
        template: empty = the checkpoint's own (saved with it); r1 (R1 chat template with the <think> prefill,
            rendered as text for tokenizers without R1 tokens), model (the tokenizer's own chat template) or r1-zero
            (the R1-Zero text prompt).
        data: the benchmark's data file, replacing the copy shipped in data/ (same format).
    """
    from r1kit.eval.benchmarks import get_bench
    from r1kit.eval.runner import RunConfig, run_eval
    from r1kit.eval.samplers import EngineSampler, OpenAISampler

    if concurrency < 1:
        raise R1kitError(f"concurrency must be >= 1, got {concurrency}")
    b = get_bench(bench, data=data)
    if base_url:
        sampler = OpenAISampler(base_url, model, concurrency=concurrency)
        template = template or "r1"
    else:
        sampler = EngineSampler.from_spec(model, template=template or None, max_batch=concurrency)
        template = sampler.template  # the checkpoint's own unless given
        ctx = sampler.model.cfg.max_seq_len
        if max_new_tokens >= ctx:
            print(f"note: max_new_tokens={max_new_tokens} is capped by the model's context of {ctx} tokens "
                  f"(minus the prompt)")
    cfg = RunConfig(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                    template=template, limit=limit, chunk_samples=max(64, 8 * concurrency))
    report = run_eval(sampler, b, cfg, out_dir or default_out_dir(model, b.name))
    m = report["metrics"]
    line = (f"{b.name}: pass@1 = {100 * m['pass@1']:.2f} ± {100 * m['pass@1_stderr']:.2f} "
            f"(k={k}, {report['n_problems']} problems)")
    if f"cons@{k}" in m:
        line += f", cons@{k} = {100 * m[f'cons@{k}']:.2f}"
    line += f", truncated {100 * m['truncation_rate']:.1f}%"
    print(line)
    print(f"wrote {report['files']['markdown']} and {report['files']['json']}")
    return report


__all__ = ["default_out_dir", "eval_cmd"]
