"""Answer extraction from completions: the one function, `extract`, that RL rewards, `Task.evaluate` and the
evaluation harness all use (docs/EVAL.md, "Scoring"; docs/RECIPE.md section 3).

Rules, in order, for one completion (the text generated after the prompt):

1. A trailing end-of-sentence token is dropped.
2. `<think>` without a later `</think>`: the model stopped while thinking -> no answer.
   With `require_think=True` (R1 chat template, where the prompt already opened `<think>\\n`), a completion
   without `</think>` has no answer either.
3. The answer section is the text after the LAST `</think>` (or the whole text when no think tag appears). The
   thinking never reaches the verifier, so a `\\boxed{}` inside the thought does not count.
4. In the answer section: if any `<answer>`/`</answer>` tag appears there must be exactly one well-formed pair with
   non-blank content, and that content is the answer (two answers, nesting or an empty tag -> no answer: reward
   hacking cases open-r1#359, Visual-RFT#176). Otherwise the content of the LAST `\\boxed{...}` (or `\\fbox{}`,
   `\\boxed x`) is the answer, joined with the boxes right before it when only separators stand between them
   ("\\boxed{1}, \\boxed{2}" answers "1, 2"); a hedged "\\boxed{5} ... wait, \\boxed{6}" therefore answers 6.
5. No tag and no box: after a closed thought, the whole answer section is a free-form answer (`free=True`): the math
   rule lets math-verify find the answer in it ("Final Answer: 7", "$7,425,000$"), the literal and countdown rules
   require the section to be the bare value or expression. Without any think tag there is no answer: the
   last-number fallback would credit unfinished reasoning (docs/EVAL.md, "Scoring").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from r1kit.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, R1_EOS, THINK_CLOSE, THINK_OPEN

_BOX = re.compile(r"\\(?:boxed|fbox)")


def strip_eos(text: str) -> str:
    """Drop trailing end-of-sentence tokens (present when the engine decodes with special tokens kept)."""
    text = text.rstrip()
    while text.endswith(R1_EOS):
        text = text[: -len(R1_EOS)].rstrip()
    return text


def answer_section(text: str, require_think: bool = False) -> str | None:
    """The text after the last `</think>`; None when the thought never closed (rules 1-3 above)."""
    text = strip_eos(text)
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text or require_think:
        return None
    return text


def _box(text: str, m: re.Match) -> tuple[str | None, int]:
    """(content, end) of the box whose command `m` matched; content None when it is unbalanced or empty."""
    i = m.end()
    rest = text[i:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        start = i + (len(rest) - len(stripped)) + 1
        depth, j = 1, start
        while j < len(text):
            c = text[j]
            if c == "\\":  # a backslash escapes the next character: \{ and \} are not braces, \\ is a line break
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:j].strip() or None, j + 1
            j += 1
        return None, len(text)
    if rest[:1] == " ":  # "\boxed 5": the next whitespace-delimited token
        m2 = re.match(r"\s*([^\s$]+)", rest)
        return (m2.group(1).rstrip(".") or None, i + m2.end()) if m2 else (None, i)
    return None, i


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces allowed) or `\\boxed x`; None if absent.

    An unbalanced last box (generation cut inside it) gives None rather than an earlier box.
    """
    matches = list(_BOX.finditer(text))
    return _box(text, matches[-1])[0] if matches else None


# What may stand between boxes that together form one answer: "\boxed{1}, \boxed{2} and \boxed{3}".
_BOX_JOINER = re.compile(r"(?:\s|[,;$]|\\[][(),;]|\\q?quad|\band\b|\\text\{\s*and\s*\})*")


def final_boxed(text: str) -> str | None:
    """The last box, joined (", ") with the boxes right before it when only separators stand between them:
    several boxes can form one answer (docs/EVAL.md, "Scoring"; Math-Verify #57), while a hedged "\\boxed{5} ... wait,
    \\boxed{6}" still answers 6. None when there is no box or the last one is unbalanced."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    boxes = [_box(text, m) for m in matches]
    if boxes[-1][0] is None:
        return None
    parts = [boxes[-1][0]]
    for k in range(len(boxes) - 2, -1, -1):
        content, end = boxes[k]
        gap = (end, matches[k + 1].start())
        if content is None or gap[0] > gap[1] or not _BOX_JOINER.fullmatch(text, *gap):
            break
        parts.append(content)
    return ", ".join(reversed(parts))


def answer_tag(section: str) -> tuple[bool, str | None]:
    """(tags_present, content): content of the single `<answer>...</answer>` pair, None if malformed or blank."""
    n_open, n_close = section.count(ANSWER_OPEN), section.count(ANSWER_CLOSE)
    if n_open == 0 and n_close == 0:
        return False, None
    if n_open != 1 or n_close != 1:
        return True, None
    i, j = section.index(ANSWER_OPEN), section.index(ANSWER_CLOSE)
    if j < i:
        return True, None
    content = section[i + len(ANSWER_OPEN) : j].strip()
    return True, (content or None)


@dataclass(frozen=True)
class Extraction:
    """What a completion answers. `answer`: the tag content or the last box, or with `free` the answer section
    itself (rule 5); None when there is no answer, and then `problem` says why."""

    answer: str | None
    free: bool = False
    problem: str = ""


def extract(text: str, require_think: bool = False) -> Extraction:
    """The final answer of a completion under rules 1-5 of the module docstring.

    >>> extract("<think>7+8=15</think> <answer>15</answer>")
    Extraction(answer='15', free=False, problem='')
    >>> extract("7+8=15</think> The sum is 15.", require_think=True)
    Extraction(answer='The sum is 15.', free=True, problem='')
    """
    section = answer_section(text, require_think)
    if section is None:
        return Extraction(None, problem="not answered (no </think>)")
    has_tags, content = answer_tag(section)
    if has_tags:
        return Extraction(content, problem="" if content else "malformed <answer> tags")
    boxed = final_boxed(section)
    if boxed is not None:
        return Extraction(boxed)
    if THINK_CLOSE in strip_eos(text) and section.strip():
        return Extraction(section.strip(), free=True)
    return Extraction(None, problem="no <answer> tag or \\boxed{}")


def extract_answer(text: str, require_think: bool = False) -> str | None:
    """The answer in a tag or box (rules 1-4; free-form sections give None), for callers that need the answer string
    itself, such as the readability filter.

    >>> extract_answer("<think>7+8=15</think> <answer>15</answer>")
    '15'
    >>> extract_answer("so x is 3</think>The answer is $\\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("<think>hmm \\\\boxed{5}") is None
    True
    """
    ex = extract(text, require_think)
    return None if ex.free else ex.answer
