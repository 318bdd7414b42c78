"""File-backed math tasks over JSON Lines (formats in data/README.md).

    GSM8KTask(split="test")        gsm8k_test.jsonl  (question, answer = solution ending "#### N")
    GSM8KTask(split="train")       gsm8k_train.jsonl (problem, answer = "N")
    MathTask(split="train")        math_train.jsonl  (problem, answer)
    MathTask(split="test")         math500.jsonl     (problem, solution, answer)
    JsonlTask("aime24.jsonl")      any file with a problem/question field and an answer (or a boxed solution)

Paths may be absolute, relative to the current directory, or relative to the benchmarks folder ($R1KIT_BENCHMARKS, or
the files shipped in `r1kit/data`). A malformed line (bad JSON, not an object, no
question) raises R1kitError naming the file and the line number; a row with no gold answer (math_train.jsonl has 4)
is skipped, logged, and its line number kept in `task.skipped`. `holdout="train"|"test"` splits any single file
deterministically by seed.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

from r1kit.errors import R1kitError, file_error
from r1kit.rewards.answer import last_boxed
from r1kit.tasks.common import Example, Task, resolve_data_path

log = logging.getLogger(__name__)

QUESTION_KEYS = ("problem", "question", "prompt")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def read_jsonl(path: Path):
    """Yield (line number, object) for each non-blank line; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise file_error(path, f"line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise file_error(path, f"line {lineno}: expected a JSON object, got {type(row).__name__}")
                yield lineno, row
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise file_error(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e


def answer_text(value) -> str:
    """A gold answer value as a string: numbers lose a ".0" (amc23 stores 27.0), strings are stripped."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class JsonlTask(Task):
    """Problems with reference answers from a JSON Lines file.

    Args:
        path: the file (see the module docstring for how it is found).
        question_key / answer_key: field names (default: the first of problem/question/prompt; answer, else the last
            `\\boxed{}` of solution).
        holdout: None (all rows, file order), "train" or "test": a seeded split of this file, `test_frac` of the rows
            (or `test_frac` rows if >= 1) going to test.
    """

    name = "jsonl"

    def __init__(self, path, question_key: str | None = None, answer_key: str | None = None,
                 holdout: str | None = None, test_frac: float = 0.1, seed: int = 0,
                 start: int = 0, stop: int | None = None, step: int = 1, split: str | None = None):
        # `split` is what every task takes; a file's own train/test split is `holdout`, chosen explicitly, since a
        # benchmark file (AIME, MATH-500) is all test and must not lose rows to a default split
        super().__init__(start, stop, step)
        self.path = resolve_data_path(path)
        self.question_key, self.answer_key = question_key, answer_key
        examples, self.skipped = [], []  # skipped: line numbers of rows without a usable gold answer
        for lineno, row in read_jsonl(self.path):
            ex = self.make_example(row, lineno)
            if ex is None:
                self.skipped.append(lineno)
            else:
                examples.append(ex)
        if not examples:
            raise file_error(self.path, "no usable rows (each needs a question and an answer)")
        if self.skipped:
            log.warning("%s: skipped %d row(s) without an answer (lines %s)", self.path, len(self.skipped),
                        ", ".join(map(str, self.skipped[:10])) + (", ..." if len(self.skipped) > 10 else ""))
        if holdout is not None:
            if holdout not in ("train", "test"):
                raise R1kitError(f"holdout must be None, 'train' or 'test', got {holdout!r}")
            order = list(range(len(examples)))
            random.Random(seed).shuffle(order)
            n_test = int(test_frac) if test_frac >= 1 else round(test_frac * len(examples))
            keep = sorted(order[:n_test] if holdout == "test" else order[n_test:])
            examples = [examples[i] for i in keep]
        self.examples = examples

    def num_examples(self) -> int:
        return len(self.examples)

    def get_example(self, index: int) -> Example:
        ex = self.examples[index]
        return Example(ex.question, ex.answer, dict(ex.meta))  # a copy: callers may edit meta

    def _error(self, lineno: int, problem: str) -> R1kitError:
        return file_error(self.path, f"line {lineno}: {problem}")

    def question(self, row: dict, lineno: int) -> str:
        keys = (self.question_key,) if self.question_key else QUESTION_KEYS
        for k in keys:
            if isinstance(row.get(k), str) and row[k].strip():
                return row[k]
        raise self._error(lineno, f"no question field (looked for {', '.join(keys)})")

    def gold(self, row: dict, lineno: int) -> str | None:
        """The gold answer string, or None when the row has none (the row is skipped and its line recorded)."""
        if self.answer_key:
            value = row.get(self.answer_key)
            return answer_text(value) or None if value is not None else None
        if row.get("answer") is not None and answer_text(row["answer"]):
            return answer_text(row["answer"])
        if isinstance(row.get("solution"), str):
            return last_boxed(row["solution"])
        return None

    def make_example(self, row: dict, lineno: int) -> Example | None:
        question, gold = self.question(row, lineno), self.gold(row, lineno)
        if gold is None:
            return None
        meta = {k: v for k, v in row.items() if k not in QUESTION_KEYS and k != "answer"}
        if row.get("answer") is not None and answer_text(row["answer"]) != gold:
            meta["raw_answer"] = row["answer"]  # e.g. GSM8K's worked solution ending in "#### N"
        meta.update(source=str(self.path), line=lineno)
        return Example(question, gold, meta)


class GSM8KTask(JsonlTask):
    """GSM8K: the gold is the number after "####" (thousands separators removed), or the whole answer field when it
    is already a bare number (the train file). `split` picks the default file; `path` overrides it."""

    name = "gsm8k"
    FILES = {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}

    def __init__(self, split: str = "test", path=None, **kw):
        if path is None:
            if split not in self.FILES:
                raise R1kitError(f"gsm8k: unknown split {split!r}; expected train or test")
            path = self.FILES[split]
        super().__init__(path, **kw)

    def gold(self, row: dict, lineno: int) -> str | None:
        raw = row.get(self.answer_key or "answer")
        if raw is None:
            return None
        text = answer_text(raw)
        if "####" in text:
            text = text.rsplit("####", 1)[1].strip()
        if _THOUSANDS.fullmatch(text):
            text = text.replace(",", "")
        return text or None


class MathTask(JsonlTask):
    """MATH-style problems: the gold is the `answer` field, else the last `\\boxed{}` of `solution`.
    split="train" reads math_train.jsonl, split="test" math500.jsonl (decontaminate math_train against MATH-500
    before training on both: benchmarks README)."""

    name = "math"
    FILES = {"train": "math_train.jsonl", "test": "math500.jsonl"}

    def __init__(self, split: str = "test", path=None, **kw):
        if path is None:
            if split not in self.FILES:
                raise R1kitError(f"math: unknown split {split!r}; expected train or test")
            path = self.FILES[split]
        super().__init__(path, **kw)
