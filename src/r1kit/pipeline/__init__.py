"""The full R1 recipe as one resumable pipeline (docs/RECIPE.md section 4), and its building blocks.

    r1kit pipeline recipes/r1-tiny.yaml          # base -> R1-Zero -> cold start -> ... -> distillation
    r1kit sample M --out runs/sft.jsonl          # rejection sampling into a versioned chat jsonl

Files, one per concern:
    runner.py        stages in one run folder, content-hash caching, resume, per-stage evaluation
    config.py        typed configs from recipe dicts; the stage key
    stages.py        the registry of stage kinds
    base.py          stage `base`: the tiny base (zero.build_base), teacher or dense student
    rl.py            stage `rl`: GRPO on rl.trainer (the loop `r1kit zero` runs) with rule, language and
                     reward-model rewards
    sample.py        stages `coldstart` and `sample`: sample, verify, filter, reformat, dedupe, decontaminate, mix
    sft.py           stage `sft`: chat SFT with assistant-only loss and packing, on r1kit.sft.train
    reward_model.py  stage `reward_model`: Bradley-Terry RM with a scalar head; the RM reward for RL
    evalstage.py     stage `eval`
    filters.py       readability filters and the reformat into R1's output pattern
    decontam.py      n-gram decontamination against the eval sets
    data.py          chat jsonl IO (versioned), assistant-only masks, packing
    modelio.py       model folders: merged weights, tokenizer with its template, provenance
Tasks (arith-mix, chats, the R1 chat adapter) are r1kit.tasks'; the held-out evaluator is r1kit.eval.heldout.
    report.py        summary table and report.md
    cli.py           `pipeline` and `sample` CLI functions
"""
from r1kit.pipeline.runner import Recipe, StageResult, StageSpec, load_recipe, run_pipeline

__all__ = ["Recipe", "StageResult", "StageSpec", "load_recipe", "run_pipeline"]
