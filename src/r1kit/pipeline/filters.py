"""Readability filters for chains of thought (R1 cold start and stage 3) and the reformat into R1's output pattern.

R1 keeps only readable reasoning: "drop CoT with mixed languages, long paragraphs or code blocks" and outputs with
heavy repetition (docs/RECIPE.md section 4). Each filter takes the chain of thought and returns True to keep it:

    language_ok     share of target-language words >= min_consistency (rewards.language_consistency: a word is a
                    run of >= 2 Latin letters or one Han character); a CoT with no words passes
    repetition_ok   the share of repeated 4-grams of units (a Latin word, a number, a Han character or a symbol)
                    is at most max_repeat
    paragraphs_ok   no paragraph (text between blank lines) longer than max_paragraph characters
    no_code_block   no ``` fence

`readability(cot, lang, cfg)` runs them all and returns the name of the first that fails (None = readable).
`reformat(completion, template, lang, answer)` turns a kept sample into `<think>\\nreasoning\\n</think>\\n\\nsummary`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from r1kit.rewards import chain_of_thought, extract_answer, language_consistency, strip_eos
from r1kit.tokenizer import THINK_CLOSE

_UNIT = re.compile(r"[A-Za-z]+|\d+|[\u3400-\u4dbf\u4e00-\u9fff]|[^\sA-Za-z\d\u3400-\u4dbf\u4e00-\u9fff]")


@dataclass
class FilterConfig:
    min_consistency: float = 0.99  # language: share of target-language words in the CoT
    max_repeat: float = 0.3  # repetition: share of repeated 4-grams
    ngram: int = 4
    max_paragraph: int = 1000  # characters per paragraph
    code_blocks: bool = False  # allow ``` fences in the CoT
    min_cot_chars: int = 1  # an empty thought is not a reasoning sample


def units(text: str) -> list[str]:
    """Words (lower-cased), numbers, single Han characters and symbols: the units of n-gram statistics."""
    return [u.lower() for u in _UNIT.findall(text)]


def language_ok(cot: str, lang: str, min_consistency: float = 0.99) -> bool:
    score = language_consistency(cot, lang)
    return score is None or score >= min_consistency


def repeat_fraction(text: str, n: int = 4) -> float:
    """1 - distinct n-grams / n-grams over units(text); 0 when there are fewer than n units."""
    u = units(text)
    grams = [tuple(u[i:i + n]) for i in range(len(u) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def repetition_ok(cot: str, max_repeat: float = 0.3, n: int = 4) -> bool:
    return repeat_fraction(cot, n) <= max_repeat


def paragraphs_ok(cot: str, max_paragraph: int = 1000) -> bool:
    return all(len(p.strip()) <= max_paragraph for p in re.split(r"\n\s*\n", cot))


def no_code_block(cot: str) -> bool:
    return "```" not in cot


def readability(cot: str, lang: str, cfg: FilterConfig) -> str | None:
    """The name of the first filter `cot` fails, or None when it is readable."""
    if len(cot.strip()) < cfg.min_cot_chars:
        return "empty_cot"
    if not no_code_block(cot) and not cfg.code_blocks:
        return "code_block"
    if not language_ok(cot, lang, cfg.min_consistency):
        return "language_mixing"
    if not repetition_ok(cot, cfg.max_repeat, cfg.ngram):
        return "repetition"
    if not paragraphs_ok(cot, cfg.max_paragraph):
        return "long_paragraph"
    return None


# --------------------------------------------------------------------------------------------------------------
# reformat

SUMMARY = {"en": "The answer is $\\boxed{{{}}}$.", "zh": "答案是 $\\boxed{{{}}}$。"}


def summary_text(answer: str, lang: str) -> str:
    return SUMMARY.get(lang, SUMMARY["en"]).format(answer)


def reformat(completion: str, template: str, lang: str) -> str | None:
    """An assistant turn in R1's readable pattern (reasoning in think tags, then a one-line summary with the boxed
    answer in the question's language), from a completion sampled under `template` ("r1-zero": `<think>..</think>
    <answer>..</answer>`; "r1": the text after the `<think>\\n` prefill). None if it has no extractable answer."""
    from r1kit.pipeline.data import r1_message

    answer = extract_answer(completion, require_think=template == "r1")
    if answer is None:
        return None
    cot = chain_of_thought(completion)
    if template == "r1":
        summary = strip_eos(completion).split(THINK_CLOSE, 1)[1].strip()
        return r1_message(cot, summary or summary_text(answer, lang))
    return r1_message(cot, summary_text(answer, lang))
