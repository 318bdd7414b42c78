"""Evaluation with the DeepSeek-R1 protocol (docs/EVAL.md).

    from r1kit.eval import EngineSampler, OpenAISampler, RunConfig, get_bench, run_eval, pass_at_k
    report = run_eval(EngineSampler.from_spec("ckpt/"), get_bench("aime24"), RunConfig(k=64), "runs/eval/ckpt")
    pass_at_k(200, 10, 10)   # 0.408548

Modules: `metrics` (pass@k, mean ± stderr, majority vote), `samplers` (in-process engine, OpenAI-compatible HTTP),
`benchmarks` (registry, math scoring through r1kit.rewards' verifier), `humaneval` (code, through r1kit.sandbox),
`runner` (records, resume, reports), `cli` (`eval_cmd`, the `r1kit eval` subcommand).
"""

from r1kit.eval.benchmarks import BENCHES, Bench, Item, Score, TaskBench, get_bench, score_math
from r1kit.eval.cli import eval_cmd
from r1kit.eval.metrics import cluster_answers, cons_at_k, majority_vote, mean_stderr, pass_at_k
from r1kit.eval.runner import RunConfig, read_records, run_eval
from r1kit.eval.samplers import Completion, EngineSampler, GenParams, OpenAISampler, SampleRequest, Sampler

__all__ = [
    "BENCHES", "Bench", "Completion", "EngineSampler", "GenParams", "Item", "OpenAISampler", "RunConfig",
    "SampleRequest", "Sampler", "Score", "TaskBench", "cluster_answers", "cons_at_k", "eval_cmd", "get_bench",
    "majority_vote", "mean_stderr", "pass_at_k", "read_records", "run_eval", "score_math",
]
