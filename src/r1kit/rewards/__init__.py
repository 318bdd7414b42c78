"""Rule-based rewards and the math answer verifier (docs/RECIPE.md section 3, docs/EVAL.md "The math verifier").

    from r1kit.rewards import combine, math_accuracy, verifier_stats
    math_accuracy("<think>7+8=15</think> <answer>15</answer>", "15")   # 1.0
    reward = combine({"accuracy": 1.0, "format": 1.0})
    total, per_fn = reward(completions, golds)
    verifier_stats()   # {'items': ..., 'timeouts': ..., 'errors': ..., ...}: log these every step

Modules: `answer` (the one extraction function), `verifier` (fast path + math-verify process pool), `rules` (`grade`,
the one scoring path of rewards and evaluation; reward functions and the registry), `expr` (safe arithmetic for
countdown, literal numbers for arith). math-verify is imported only inside worker processes.
"""

from r1kit.rewards.answer import Extraction, answer_section, extract, extract_answer, last_boxed, strip_eos
from r1kit.rewards.expr import UnsafeExpression, check_countdown, check_literal, literal_value, parse_expr
from r1kit.rewards.rules import (
    REFLECTIVE_WORDS,
    REWARDS,
    RULES,
    Grade,
    RewardFn,
    accuracy,
    chain_of_thought,
    combine,
    count_words,
    format_ok,
    format_r1_ok,
    get_reward,
    grade,
    language_consistency,
    math_accuracy,
    neutral_fill,
    overlong_penalty,
    reflection_rate,
)
from r1kit.rewards.verifier import (
    Verifier,
    configure_verifier,
    get_verifier,
    reset_verifier_stats,
    verifier_stats,
    verify,
)

__all__ = [
    "Extraction",
    "Grade",
    "REFLECTIVE_WORDS",
    "REWARDS",
    "RULES",
    "RewardFn",
    "UnsafeExpression",
    "Verifier",
    "accuracy",
    "answer_section",
    "chain_of_thought",
    "check_countdown",
    "check_literal",
    "combine",
    "configure_verifier",
    "count_words",
    "extract",
    "extract_answer",
    "format_ok",
    "format_r1_ok",
    "get_reward",
    "get_verifier",
    "grade",
    "language_consistency",
    "last_boxed",
    "literal_value",
    "math_accuracy",
    "neutral_fill",
    "overlong_penalty",
    "parse_expr",
    "reflection_rate",
    "reset_verifier_stats",
    "strip_eos",
    "verifier_stats",
    "verify",
]
