"""Answer extraction from completions (docs/EVAL.md, "Scoring"; docs/RECIPE.md section 3).

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
   `\\boxed x`) is the answer; a hedged "\\boxed{5} ... wait, \\boxed{6}" therefore answers 6.
5. No tag and no box -> no answer. There is no last-number fallback.
"""

from __future__ import annotations

import re

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


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces allowed) or `\\boxed x`; None if absent.

    An unbalanced last box (generation cut inside it) gives None rather than an earlier box.
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
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
                    return text[start:j].strip() or None
            j += 1
        return None
    if rest[:1] == " ":  # "\boxed 5": the next whitespace-delimited token
        m = re.match(r"\s*([^\s$]+)", rest)
        return m.group(1).rstrip(".") if m else None
    return None


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


def extract_answer(text: str, require_think: bool = False) -> str | None:
    """The final answer string of a completion, or None (see the module docstring for the rules).

    >>> extract_answer("<think>7+8=15</think> <answer>15</answer>")
    '15'
    >>> extract_answer("so x is 3</think>The answer is $\\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("<think>hmm \\\\boxed{5}") is None
    True
    """
    section = answer_section(text, require_think)
    if section is None:
        return None
    has_tags, content = answer_tag(section)
    if has_tags:
        return content
    return last_boxed(section)
