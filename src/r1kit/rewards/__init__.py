"""Rule-based rewards and the math answer verifier (docs/RECIPE.md section 3, docs/EVAL.md "The math verifier").

    from r1kit.rewards import combine, math_accuracy, verifier_stats
    math_accuracy("<think>7+8=15</think> <answer>15</answer>", "15")   # 1.0
    reward = combine({"accuracy": 1.0, "format": 1.0})
    total, per_fn = reward(completions, golds)
    verifier_stats()   # {'items': ..., 'timeouts': ..., 'errors': ..., ...}: log these every step

Modules: `answer` (extraction rules), `verifier` (fast path + math-verify process pool), `rules` (reward functions and
the registry), `expr` (safe arithmetic for countdown). math-verify is imported only inside worker processes.
"""

from r1kit.rewards.answer import answer_section, extract_answer, last_boxed, strip_eos
from r1kit.rewards.expr import UnsafeExpression, check_countdown, parse_expr
from r1kit.rewards.rules import (
    REFLECTIVE_WORDS,
    REWARDS,
    RewardFn,
    accuracy,
    chain_of_thought,
    combine,
    count_words,
    format_ok,
    format_r1_ok,
    get_reward,
    language_consistency,
    overlong_penalty,
    reflection_rate,
)
from r1kit.rewards.verifier import (
    Verifier,
    configure_verifier,
    get_verifier,
    math_accuracy,
    reset_verifier_stats,
    verifier_stats,
    verify,
)

__all__ = [
    "REFLECTIVE_WORDS",
    "REWARDS",
    "RewardFn",
    "UnsafeExpression",
    "Verifier",
    "accuracy",
    "answer_section",
    "chain_of_thought",
    "check_countdown",
    "combine",
    "configure_verifier",
    "count_words",
    "extract_answer",
    "format_ok",
    "format_r1_ok",
    "get_reward",
    "get_verifier",
    "language_consistency",
    "last_boxed",
    "math_accuracy",
    "overlong_penalty",
    "parse_expr",
    "reflection_rate",
    "reset_verifier_stats",
    "strip_eos",
    "verifier_stats",
    "verify",
]
