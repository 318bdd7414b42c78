"""Tasks: prompts with reference answers, scored the same way for RL rewards and evaluation.

    from r1kit.tasks import get_task
    task = get_task("countdown", split="train", n_numbers=3)
    ex = task[0]; task.prompt(ex); task.evaluate(ex, completion); task.worked_solution(ex)

Built in: `arith`, `arith-mix` (bilingual, for the pipeline), `countdown` (generated, offline), `gsm8k`, `math`,
`jsonl` (files), and the benchmark files
`math500`, `aime24`, `amc23`, `minerva_math`, `aime_1983_2023` shipped in `r1kit/data` (`data/` in the repository;
$R1KIT_BENCHMARKS overrides).
"""

from __future__ import annotations

import functools

from r1kit.errors import R1kitError
from r1kit.tasks.common import (
    BENCHMARKS_ENV,
    Example,
    Task,
    TaskMixture,
    benchmarks_dir,
    resolve_data_path,
)
from r1kit.tasks.chat import CHAT_DATA, ChatTask, MixedArithTask, chat_examples, prompt_ids
from r1kit.tasks.files import GSM8KTask, JsonlTask, MathTask, read_jsonl
from r1kit.tasks.synthetic import ArithTask, CountdownTask, SyntheticTask

TASKS = {
    "arith": ArithTask,
    "arith-mix": MixedArithTask,
    "countdown": CountdownTask,
    "gsm8k": GSM8KTask,
    "math": MathTask,
    "jsonl": JsonlTask,
    "math500": functools.partial(MathTask, split="test"),
    "aime24": functools.partial(JsonlTask, "aime24.jsonl"),
    "amc23": functools.partial(JsonlTask, "amc23.jsonl"),
    "minerva_math": functools.partial(JsonlTask, "minerva_math.jsonl"),
    "aime_1983_2023": functools.partial(JsonlTask, "aime_1983_2023.jsonl"),
}


def get_task(name: str, split: str | None = None, **kw) -> Task:
    """Build the task called `name` with keyword options (split, seed, size, path, difficulty knobs, slicing)."""
    if split is not None:
        kw["split"] = split
    if name not in TASKS:
        raise R1kitError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    task = TASKS[name](**kw)
    if name != task.name:
        task.name = name  # e.g. "aime24" rather than "jsonl" in example meta and logs
    return task


__all__ = [
    "CHAT_DATA",
    "ChatTask",
    "MixedArithTask",
    "chat_examples",
    "prompt_ids",
    "BENCHMARKS_ENV",
    "TASKS",
    "ArithTask",
    "CountdownTask",
    "Example",
    "GSM8KTask",
    "JsonlTask",
    "MathTask",
    "SyntheticTask",
    "Task",
    "TaskMixture",
    "benchmarks_dir",
    "get_task",
    "read_jsonl",
    "resolve_data_path",
]
