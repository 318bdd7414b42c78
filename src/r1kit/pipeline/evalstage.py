"""Stage `eval`: evaluate an input model with its own settings (more problems, other k), beyond the runner's
automatic per-stage evaluation. Writes eval.json; the metrics appear in the report row of this stage."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r1kit.eval.heldout import EvalConfig


@dataclass
class EvalStageConfig(EvalConfig):
    pass


def run(cfg: EvalStageConfig, inputs: dict, out: Path, ctx):
    from r1kit.pipeline import modelio
    from r1kit.eval.heldout import evaluate_model
    from r1kit.pipeline.runner import StageResult
    from r1kit.train import dist

    model, tok, meta = modelio.load(inputs["model"])
    result = evaluate_model(model, tok, meta["template"], cfg)
    dist.on_main(lambda: (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n"))
    ctx.log(f"  pass@1 {result['pass@1']:.3f} over {cfg.problems} problems x {cfg.k} samples")
    return StageResult({"eval": "eval.json"}, {k: v for k, v in result.items() if k != "sample"})
