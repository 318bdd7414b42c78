"""The Task protocol shared by RL rewards and evaluation (one Task for both, after nanochat `tasks/common.py`).

A Task is an indexable list of `Example`s (question, gold answer, meta) that can also render a prompt and score a
completion. Slicing (start/stop/step, or `task[10:20]`) returns a view of the same task.

    task = get_task("arith", split="train", n_terms=3)
    ex = task[0]
    prompt = task.prompt(ex)                     # R1-Zero text ending in "Assistant:"
    score = task.evaluate(ex, completion)        # 1.0 / 0.0
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.errors import R1kitError
from r1kit.rewards.rules import grade
from r1kit.tokenizer import render_r1_zero

PROMPT_TEMPLATES = ("r1-zero", "r1")
# DeepSeek's usage recommendation for math with the R1 chat template (all instructions in the user turn).
R1_INSTRUCTION = {
    "en": "Please reason step by step, and put your final answer within \\boxed{}.",
    "zh": "请逐步推理，并把最终答案写在 \\boxed{} 中。",
}


@dataclass
class Example:
    question: str
    answer: str  # the gold answer as a string ("21", "\\frac{1}{2}", "(8*3)-4")
    meta: dict = field(default_factory=dict)


class Task:
    """Base class: subclasses implement `num_examples()` and `get_example(index)` over the unsliced data."""

    name = "task"
    verifier = "math"  # the answer rule (r1kit.rewards.RULES) for examples whose meta names none

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        self._slice = slice(start, stop, step)
        self._range: range | None = None

    # -- data ----------------------------------------------------------------------------------------------------

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> Example:
        raise NotImplementedError

    @property
    def indices(self) -> range:
        """Underlying example indices of this (possibly sliced) view."""
        if self._range is None:
            self._range = range(self.num_examples())[self._slice]
        return self._range

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            view = copy.copy(self)
            view._range = self.indices[i]
            return view
        ex = self.get_example(self.indices[i])
        ex.meta.setdefault("task", self.name)
        ex.meta.setdefault("verifier", self.verifier)  # rewards and evaluation see only examples: they carry the rule
        return ex

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # -- prompting and scoring -----------------------------------------------------------------------------------

    def prompt(self, example: Example, template: str = "r1-zero"):
        """"r1-zero": the R1-Zero text prompt (a str ending in "Assistant:"); "r1": chat messages for the R1 template
        (the tokenizer renders them), with DeepSeek's "put your final answer within \\boxed{}" instruction."""
        if template == "r1-zero":
            return render_r1_zero(example.question)
        if template == "r1":
            instruction = R1_INSTRUCTION.get(example.meta.get("lang") or "en", R1_INSTRUCTION["en"])
            return [{"role": "user", "content": f"{example.question}\n\n{instruction}"}]
        raise R1kitError(f"unknown prompt template {template!r}; expected one of {', '.join(PROMPT_TEMPLATES)}")

    def evaluate(self, example: Example, completion: str, template: str = "r1-zero") -> float:
        """1.0 if the completion's final answer is right, else 0.0: r1kit.rewards.grade, the path the RL accuracy
        reward and the evaluation harness take, with the rule named by `example.meta["verifier"]`, else the task's."""
        scored = Example(example.question, example.answer, {"verifier": self.verifier, **example.meta})
        return float(grade([completion], [example.answer], template, examples=[scored])[0].correct)

    def reward(self, example: Example, completion: str, template: str = "r1-zero") -> float:
        """RL reward for one completion; defaults to `evaluate`."""
        return self.evaluate(example, completion, template)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)})"


class TaskMixture(Task):
    """Several tasks shuffled together (deterministically by seed); scoring is delegated to the owning task."""

    name = "mixture"

    def __init__(self, tasks: list[Task], seed: int = 0, **slice_kw):
        super().__init__(**slice_kw)
        if not tasks:
            raise R1kitError("TaskMixture needs at least one task")
        self.tasks = list(tasks)
        self._index = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self._index)

    def num_examples(self) -> int:
        return len(self._index)

    def get_example(self, index: int) -> Example:
        t, i = self._index[index]
        ex = self.tasks[t][i]
        ex.meta["mixture_task"] = t
        return ex

    def _owner(self, example: Example) -> Task:
        return self.tasks[example.meta["mixture_task"]]

    def prompt(self, example: Example, template: str = "r1-zero"):
        return self._owner(example).prompt(example, template)

    def evaluate(self, example: Example, completion: str, template: str = "r1-zero") -> float:
        return self._owner(example).evaluate(example, completion, template)

    def reward(self, example: Example, completion: str, template: str = "r1-zero") -> float:
        return self._owner(example).reward(example, completion, template)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers for generated tasks


def example_rng(*key) -> random.Random:
    """A Random seeded from a string key: the same example for the same (task, seed, split, index) on every run."""
    return random.Random("/".join(map(str, key)))


def in_test_split(question: str, test_percent: int) -> bool:
    """Hash-based split membership, so train and test never share a question whatever their sizes."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % 100 < test_percent


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark files

BENCHMARKS_ENV = "R1KIT_BENCHMARKS"


def packaged_benchmarks() -> Path:
    """The benchmark files shipped inside r1kit (package data `r1kit/data`; `data/` in the repository)."""
    return Path(str(importlib.resources.files("r1kit") / "data"))


def benchmarks_dir() -> Path:
    """The benchmarks folder: $R1KIT_BENCHMARKS if set (a folder of files with the same names), else the copy
    shipped with the package."""
    env = os.environ.get(BENCHMARKS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise R1kitError(f"{BENCHMARKS_ENV}={env}: not a directory")
        return p
    return packaged_benchmarks()


def resolve_data_path(path: str | os.PathLike) -> Path:
    """`path` as given if it exists, else relative to the benchmarks folder (so "gsm8k_test.jsonl" works)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_absolute():
        raise R1kitError(f"{p}: data file not found")
    bench = benchmarks_dir()
    if (bench / p).is_file():
        return bench / p
    raise R1kitError(f"{p}: data file not found (nor in {bench})")
