"""CLI functions (`r1kit pipeline`, `r1kit sample`): typed signatures with Google-style Args for r1kit.cli."""
from __future__ import annotations

import time
from pathlib import Path


def pipeline(recipe: str, run_dir: str = "", force: str = "", until: str = "", threads: int = 0) -> None:
    """Run a multi-stage recipe (e.g. the full R1 recipe) in one run folder, skipping finished stages.

    Stages whose config and inputs are unchanged since they finished are skipped (keyed by a content hash); a
    changed stage re-runs together with every stage downstream of it; an interrupted stage resumes. Prints a
    summary table and writes report.md (pass@1 and mean length after each stage) into the run folder.

    Args:
        recipe: the YAML recipe, e.g. recipes/r1-tiny.yaml.
        run_dir: the run folder; empty = runs/<recipe name>.
        force: comma-separated stage names to re-run even if cached.
        until: stop after this stage (empty = run all).
        threads: torch CPU threads (0 = torch's default).
    """
    import torch

    from r1kit.pipeline.report import print_table, write
    from r1kit.pipeline.runner import load_recipe, run_pipeline
    from r1kit.train import dist

    if threads:
        torch.set_num_threads(threads)
    rec = load_recipe(recipe)
    folder = Path(run_dir or f"runs/{rec.name}")
    t0 = time.time()
    records = run_pipeline(rec, folder, force=tuple(s for s in force.split(",") if s), until=until)
    path = dist.on_main(lambda: write(folder, records, rec, time.time() - t0))
    if dist.current().main:  # under torchrun: rank 0 alone reports
        print_table(records, f"{rec.name}: {folder}")
        print(f"report: {path}")


def sample(model: str, out: str = "runs/sft.jsonl", task: str = "arith-mix", prompts: int = 300, k: int = 4,
           temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, max_per_prompt: int = 2,
           general: str = "", general_frac: float = 0.1, decontam_n: int = 13, min_consistency: float = 0.99,
           seed: int = 0) -> None:
    """Rejection sampling: k samples per prompt from a checkpoint, keep the verified and readable ones, write SFT data.

    Keeps samples the task's verifier passes, drops unreadable chains of thought (language mixing, repetition, long
    paragraphs, code blocks), dedupes, drops prompts that overlap the eval sets (n-grams vs the benchmark files
    and the task's test split), mixes in non-reasoning chats, and writes OUT's stem with a version (sft-v1.jsonl,
    sft-v2.jsonl, ...) plus a .stats.json beside it.

    Args:
        model: a pipeline model folder (or any HF checkpoint folder with tokenizer files; then r1-zero prompts).
        out: output path; the file written is STEM-vN.jsonl in its folder.
        task: task whose training prompts are sampled (arith-mix, arith, countdown, gsm8k, math, ...).
        prompts: training prompts to sample.
        k: samples per prompt.
        temperature: sampling temperature.
        top_p: nucleus sampling threshold.
        max_new_tokens: completion length limit (truncated samples are dropped).
        max_per_prompt: distinct kept samples per prompt.
        general: non-reasoning chats jsonl to mix in; empty = the built-in set.
        general_frac: share of non-reasoning chats in the output (0 = none).
        decontam_n: n-gram size for decontamination (0 = off).
        min_consistency: language filter: minimum share of target-language words in the chain of thought.
        seed: seed of prompt choice and sampling.
    """
    from r1kit.pipeline.filters import FilterConfig
    from r1kit.pipeline.sample import SampleConfig, build

    path = Path(out)
    cfg = SampleConfig(task=task, prompts=prompts, k=k, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, max_per_prompt=max_per_prompt,
                       filters=FilterConfig(min_consistency=min_consistency), decontam_n=decontam_n, general=general,
                       general_frac=general_frac, name=path.stem, seed=seed)
    written, stats = build(Path(model), cfg, path.parent)
    print(f"wrote {written} ({stats['reasoning_rows']} reasoning + {stats['general_rows']} non-reasoning rows; "
          f"counts {stats['counts']})")
