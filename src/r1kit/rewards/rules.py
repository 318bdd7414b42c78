"""Rule-based rewards (docs/RECIPE.md sections 3 and 6) as plain batch callables, picked by name from `REWARDS`.

Every reward has the signature `fn(completions, golds, **ctx) -> list[float | None]` where `completions` are the
generated texts (what follows the prompt), `golds` the reference answers, and `ctx` optional per-batch context the
trainer passes to all of them (unknown keys are ignored):

    lengths    list[int]   completion lengths in tokens (needed by `overlong`)
    lang       str | list  target language of the chain of thought, "en" or "zh" (`language`; default "en")
    template   str         "r1-zero" (default) or "r1"; with "r1" an answer needs a closing </think>, and a
                           completion without think tags is all thought (`language`)
    truncated  list[bool]  generation hit the token limit: every reward that scores the answer gives 0
                           (accuracy, countdown; docs/EVAL.md, "Scoring")
    timeout_s  float       per-item verifier timeout (accuracy)
    examples   list        the r1kit.tasks Examples behind the golds; an example's meta["verifier"] names the rule
                           its answer is checked by (see `grade`); they also tell `combine` which samples share a prompt

None means "does not apply to this sample" (e.g. `language` on a thought without any word, or no thought at all).
It is neutral: `combine` gives the sample the mean of that reward over the other samples of its prompt, so it neither
gains nor loses against them (an empty thought is never worse than a thought with one word), and keeps the None in
the per-function lists so the trainer can log a masked mean.

    reward = combine({"accuracy": 1.0, "format": 1.0})        # R1-v2 Eq. 4: Reward_rule = acc + format
    total, per_fn = reward(completions, golds, lengths=lengths)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from r1kit.errors import R1kitError
from r1kit.rewards.answer import extract, strip_eos
from r1kit.rewards.expr import UnsafeExpression, check_countdown, check_literal, normalize_expr, parse_expr
from r1kit.rewards.verifier import get_verifier
from r1kit.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

RewardFn = Callable[..., list]  # (completions: list[str], golds: list[str], **ctx) -> list[float | None]
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def _per_sample(value, n: int, name: str) -> list:
    """A ctx value given once for the batch or once per sample."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise R1kitError(f"reward context {name!r} has {len(value)} entries for {n} completions")
        return list(value)
    return [value] * n


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy


# The rules an answer can be checked by, named by an example's meta["verifier"] (default "math").
RULES = {
    "math": "math equivalence with the gold (fast path, else math-verify; a free-form section is read by math-verify)",
    "literal": "a literal number equal to the gold: a computation such as the restated question scores 0",
    "countdown": "an expression using meta['numbers'] exactly once each whose exact value is meta['target']",
}


@dataclass(frozen=True)
class Grade:
    """One completion's verdict: `answer` is what was checked (None when nothing was, or when math-verify read a
    free-form section), `detail` why nothing was."""

    correct: bool
    answer: str | None = None
    detail: str = ""


def grade(completions: Sequence[str], golds: Sequence[str], template: str = "r1-zero", truncated=None,
          timeout_s: float | None = None, examples=None) -> list[Grade]:
    """The one scoring path of RL rewards, `Task.evaluate` and the evaluation harness: extract each final answer
    (r1kit.rewards.answer.extract), then check it by its example's rule (`RULES`).

    A truncated completion (`truncated[i]` True) scores 0 whatever it contains. Without `examples` every answer is
    checked by the math rule, so arith and countdown callers must pass them: math equivalence would accept "1+6+9"
    for 16 and the bare target for a countdown expression.
    """
    n = len(completions)
    if len(golds) != n:
        raise R1kitError(f"grading got {n} completions for {len(golds)} golds")
    metas = [getattr(ex, "meta", None) or {} for ex in _per_sample(examples, n, "examples")]
    return _grade(completions, golds, metas, template, truncated, timeout_s)


def _grade(completions, golds, metas, template, truncated, timeout_s) -> list[Grade]:
    n = len(completions)
    cut = _per_sample(truncated, n, "truncated") if truncated is not None else [False] * n
    out: list[Grade | None] = [None] * n
    tagged, free = [], []  # math answers for Verifier.equivalent, free-form sections for Verifier.verify_batch
    for i, (text, gold, meta) in enumerate(zip(completions, golds, metas)):
        if cut[i]:
            out[i] = Grade(False, None, "truncated (hit the token limit)")
            continue
        ex = extract(text, require_think=template == "r1")
        rule = meta.get("verifier", "math")
        if rule not in RULES:
            raise R1kitError(f"accuracy reward: unknown verifier {rule!r} in example meta; expected one of "
                             f"{', '.join(RULES)}")
        if ex.answer is None:
            out[i] = Grade(False, None, ex.problem)
        elif rule == "math":
            (free if ex.free else tagged).append((i, ex.answer))
        elif rule == "literal":
            out[i] = Grade(check_literal(ex.answer, gold), ex.answer)
        else:
            out[i] = Grade(check_countdown(ex.answer, meta["numbers"], meta["target"]), ex.answer)
    v = get_verifier()
    for jobs, check, keep in ((tagged, v.equivalent, True), (free, v.verify_batch, False)):
        if jobs:
            oks = check([golds[i] for i, _ in jobs], [a for _, a in jobs], timeout_s)
            for (i, a), ok in zip(jobs, oks):
                out[i] = Grade(ok, a if keep else None)
    return out  # type: ignore[return-value]


def accuracy(completions: Sequence[str], golds: Sequence[str], template: str = "r1-zero", truncated=None,
             timeout_s: float | None = None, examples=None, **_) -> list[float]:
    """1.0 if the final answer is right under its example's rule (`grade`), else 0.0; 0.0 when truncated.

    Math equivalence: exact match after normalisation or integer equality in-process; otherwise math-verify in the
    verifier's process pool with a wall-clock timeout (timeouts score 0 and are counted in `verifier_stats()`).
    """
    return [float(g.correct) for g in grade(completions, golds, template, truncated, timeout_s, examples)]


def math_accuracy(completion: str, gold: str, require_think: bool = False, timeout_s: float | None = None) -> float:
    """1.0 if the completion's final answer is math-equivalent to `gold`, else 0.0 (one completion, math rule).

    >>> math_accuracy("<think>8*2=16 3+16=19</think> <answer>19</answer>", "19")
    1.0
    """
    return accuracy([completion], [gold], "r1" if require_think else "r1-zero", timeout_s=timeout_s)[0]


def countdown(completions: Sequence[str], golds: Sequence[str], template: str = "r1-zero", truncated=None,
              **_) -> list[float]:
    """1.0 if the answer uses the gold expression's numbers exactly once each and reaches the same value.

    The gold is any valid solution expression (r1kit.tasks countdown examples carry one): numbers and target are
    recovered from it, so a bare target number or an unrelated expression with the right value scores 0; so does a
    truncated completion.
    """
    metas = []
    for g in golds:
        try:
            value, numbers = parse_expr(normalize_expr(g))
        except UnsafeExpression as e:
            raise R1kitError(f"countdown reward: gold {g!r} is not an arithmetic expression ({e})") from None
        metas.append({"verifier": "countdown", "numbers": numbers, "target": value})
    if len(golds) != len(completions):
        raise R1kitError(f"countdown reward got {len(completions)} completions for {len(golds)} golds")
    return [float(g.correct) for g in _grade(completions, golds, metas, template, truncated, None)]


# ---------------------------------------------------------------------------------------------------------------------
# Format

# Anchored: nothing before <think> but whitespace, nothing after </answer> but whitespace (and the eos token).
_FORMAT = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.+?)</answer>\s*$", re.DOTALL)


def format_ok(completion: str) -> bool:
    """Strict R1-Zero format: exactly one `<think>...</think>` then exactly one `<answer>...</answer>` with non-blank
    content, anchored at both ends. Repeated or nested tags fail (open-r1#359); so does an empty or whitespace-only
    answer (Visual-RFT#176). The thought may be empty: the format reward must not pay for thinking by itself, so
    thinking earns its place through accuracy alone (R1 answers trivial prompts with an empty thought)."""
    text = strip_eos(completion)
    if any(text.count(t) != 1 for t in TAGS):
        return False
    m = _FORMAT.match(text)
    return bool(m) and bool(m.group(2).strip())


def format_r1_ok(completion: str) -> bool:
    """R1 chat template (the prompt already ends in `<think>\\n`): exactly one `</think>`, no `<think>`, and a
    non-blank answer after it. The thought itself may be empty (R1 answers trivial prompts without thinking)."""
    text = strip_eos(completion)
    if text.count(THINK_CLOSE) != 1 or THINK_OPEN in text:
        return False
    return bool(text.split(THINK_CLOSE, 1)[1].strip())


def format_reward(completions: Sequence[str], golds: Sequence[str] | None = None, **_) -> list[float]:
    return [float(format_ok(c)) for c in completions]


def format_r1(completions: Sequence[str], golds: Sequence[str] | None = None, **_) -> list[float]:
    return [float(format_r1_ok(c)) for c in completions]


# ---------------------------------------------------------------------------------------------------------------------
# Language consistency (R1-v2 Eq. 7): Reward_language = Num(Words_target) / Num(Words) over the chain of thought.
#
# Word segmentation (the paper does not define one):
#   - an English word is a maximal run of >= 2 Latin letters (ASCII and Latin-1/Extended-A accented letters) that is
#     not a LaTeX command (not preceded by a backslash); single letters are math variables, not words;
#   - a Chinese word is one Han ideograph (CJK Unified Ideographs + Extension A, compatibility ideographs, and the
#     supplementary-plane extensions): Chinese has no spaces, so each character counts as one word;
#   - any other alphabetic run (Cyrillic, Hangul, kana, Arabic, ...) is a word of neither target and so counts
#     against both; Greek letters are treated as math symbols (alpha, pi) and do not count;
#   - digits, punctuation, whitespace, operators and LaTeX commands are not words.
# A chain of thought with no words at all (or no thought) scores None, "does not apply": pure arithmetic "7+8=15"
# has no language to judge, and an empty thought is R1's answer to a trivial prompt.

_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017f"
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_GREEK = "\u0370-\u03ff"
_WORD = re.compile(rf"(?<![\\{_LATIN}])([{_LATIN}]{{2,}})(?![{_LATIN}])|([{_HAN}])|([^\W\d_{_LATIN}{_HAN}{_GREEK}]+)")
LANGS = ("en", "zh")


def chain_of_thought(completion: str, template: str = "r1") -> str:
    """Text inside `<think>...</think>`, or before `</think>` (R1 template), or after a `<think>` that never closed.
    Without any think tag: with the R1 template (whose prompt opened `<think>`) the whole completion is an unfinished
    thought; with "r1-zero" there is no thought ("")."""
    text = strip_eos(completion)
    if THINK_CLOSE not in text and THINK_OPEN not in text:
        return "" if template == "r1-zero" else text
    if THINK_CLOSE in text:
        text = text.split(THINK_CLOSE, 1)[0]
    if THINK_OPEN in text:
        text = text.split(THINK_OPEN, 1)[1]
    return text


def count_words(text: str) -> dict[str, int]:
    """{"en": English words, "zh": Chinese words, "other": other-script words} under the segmentation above."""
    counts = {"en": 0, "zh": 0, "other": 0}
    for en, zh, other in _WORD.findall(text):
        counts["en" if en else "zh" if zh else "other"] += 1
    return counts


def language_consistency(text: str, lang: str = "en") -> float | None:
    """Share of target-language words in `text` (R1-v2 Eq. 7); None when it has no words."""
    if lang not in LANGS:
        raise R1kitError(f"language reward: unknown target language {lang!r}; expected one of {', '.join(LANGS)}")
    counts = count_words(text)
    total = sum(counts.values())
    return counts[lang] / total if total else None


def language(completions: Sequence[str], golds: Sequence[str] | None = None, lang="en", template: str = "r1-zero",
             **_) -> list[float | None]:
    """Language consistency of each chain of thought; `lang` is one target for the batch or one per sample. None
    for an empty or wordless thought (neutral in `combine`)."""
    langs = _per_sample(lang, len(completions), "lang")
    return [language_consistency(chain_of_thought(c, template), la) for c, la in zip(completions, langs)]


# ---------------------------------------------------------------------------------------------------------------------
# Length


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO soft overlong punishment: 0 up to max_len - cache_len tokens, then a linear ramp to -1 at max_len, and
    -1 beyond (docs/RECIPE.md section 3; DAPO uses max_len 20,480 = 16,384 + a 4,096 cache)."""
    if not 0 < cache_len <= max_len:
        raise R1kitError(f"overlong reward needs 0 < cache_len <= max_len, got {cache_len=}, {max_len=}")
    expected = max_len - cache_len
    if length <= expected:
        return 0.0
    if length <= max_len:
        return (expected - length) / cache_len
    return -1.0


def overlong(completions: Sequence[str], golds: Sequence[str] | None = None, lengths=None, max_len: int | None = None,
             cache_len: int | None = None, **_) -> list[float]:
    """Soft overlong punishment per completion; needs `lengths` (tokens) and `max_len`, `cache_len` in ctx or bound
    with `get_reward("overlong", max_len=..., cache_len=...)`."""
    if lengths is None or max_len is None or cache_len is None:
        raise R1kitError("overlong reward needs lengths=, max_len= and cache_len= (token counts)")
    if len(lengths) != len(completions):
        raise R1kitError(f"overlong reward got {len(lengths)} lengths for {len(completions)} completions")
    return [overlong_penalty(int(n), max_len, cache_len) for n in lengths]


def length_penalty(completions: Sequence[str], golds: Sequence[str] | None = None, lengths=None,
                   max_len: int | None = None, **_) -> list[float]:
    """Simple length shaping: -length / max_len (0 for an empty completion, -1 at the limit). Weight it small
    (e.g. 0.1) so it only breaks ties between otherwise equal completions."""
    if lengths is None or not max_len:
        raise R1kitError("length reward needs lengths= and max_len= (token counts)")
    return [-min(int(n), max_len) / max_len for n in lengths]


# ---------------------------------------------------------------------------------------------------------------------
# Logging helper

REFLECTIVE_WORDS = ("wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check")
_REFLECTIVE = re.compile(r"\b(" + "|".join(REFLECTIVE_WORDS) + r")\b", re.IGNORECASE)


def reflection_rate(text: str) -> float:
    """Number of reflective words in one response (R1-v2's "wait, mistake, however, but, retry, error, verify,
    wrong, evaluate, check"; whole words, any case, no inflections). Average it over a batch to log reflective
    words per response, as in the paper's figure on reflective behaviour over training."""
    return float(len(_REFLECTIVE.findall(text)))


# ---------------------------------------------------------------------------------------------------------------------
# Registry

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "format": format_reward,
    "format_r1": format_r1,
    "language": language,
    "overlong": overlong,
    "length": length_penalty,
    "countdown": countdown,
}


def get_reward(name: str, **params) -> RewardFn:
    """The reward called `name`, with `params` bound as keyword arguments if given."""
    if name not in REWARDS:
        raise R1kitError(f"unknown reward {name!r}; expected one of {', '.join(REWARDS)}")
    fn = REWARDS[name]
    return functools.partial(fn, **params) if params else fn


def _prompt_groups(n: int, examples) -> list[list[int]]:
    """Indices of the samples that answer the same prompt (same example question); one group without examples."""
    if examples is None:
        return [list(range(n))]
    groups: dict = {}
    for i, ex in enumerate(_per_sample(examples, n, "examples")):
        groups.setdefault(getattr(ex, "question", None), []).append(i)
    return list(groups.values())


def neutral_fill(scores: Sequence[float | None], groups: list[list[int]]) -> list[float]:
    """`scores` with each None (does not apply) replaced by the mean score of the samples of its group that it
    applies to, or 0 when it applies to none: the sample's group-relative advantage is then what it would be
    without this reward."""
    out = [0.0] * len(scores)
    for idx in groups:
        scored = [scores[i] for i in idx if scores[i] is not None]
        mean = sum(scored) / len(scored) if scored else 0.0
        for i in idx:
            out[i] = mean if scores[i] is None else float(scores[i])
    return out


def combine(specs: dict[str, float], params: dict[str, dict] | None = None):
    """A weighted sum of named rewards: `combine({"accuracy": 1, "format": 1})(completions, golds, **ctx)` returns
    `(total, per_fn)`: total[i] = sum of weight * reward, and per_fn = {name: the unweighted list, None kept}.
    A reward that does not apply to sample i (None) is neutral: it counts as its mean over the samples of the same
    prompt (`examples` in ctx; the whole batch without them) that it applies to (`neutral_fill`). `params` binds
    per-reward options, e.g. {"overlong": {"max_len": 512, "cache_len": 128}}."""
    params = params or {}
    unknown = set(params) - set(specs)
    if unknown:
        raise R1kitError(f"combine: params given for rewards not in specs: {', '.join(sorted(unknown))}")
    fns = {name: get_reward(name, **params.get(name, {})) for name in specs}

    def reward(completions: Sequence[str], golds: Sequence[str], **ctx) -> tuple[list[float], dict[str, list]]:
        per_fn = {name: list(fn(completions, golds, **ctx)) for name, fn in fns.items()}
        groups = _prompt_groups(len(completions), ctx.get("examples"))
        total = [0.0] * len(completions)
        for name, scores in per_fn.items():
            if len(scores) != len(completions):
                raise R1kitError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
            for i, s in enumerate(neutral_fill(scores, groups)):
                total[i] += specs[name] * s
        return total, per_fn

    return reward
