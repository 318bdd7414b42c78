"""Decontamination: drop training prompts that share an n-gram with an evaluation set.

Units are those of filters.units (lower-cased Latin words, numbers, single Han characters, symbols); punctuation
and whitespace differences therefore do not hide a copy. A text shorter than n units contributes (and is checked
as) one gram made of all its units, so short synthetic questions are matched exactly rather than never. The
evaluation side is every benchmark file in the benchmarks folder (tasks.benchmarks_dir) except training sets
(names containing "train") and the verifier cases, plus the test splits of the synthetic tasks in use. Short texts are compared
whole on purpose: checking whether a prompt merely contains a short test question would flag "计算 3+5+2+1" for the
test question "计算 3+5+2", a different problem.

    index = eval_index(8, tasks=[test_split])
    index.contaminated("Janet's ducks lay 16 eggs per day ...")   # True: a GSM8K test question
"""
from __future__ import annotations

import json
from pathlib import Path

from r1kit.pipeline.filters import units

TEXT_FIELDS = ("problem", "question")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The n-grams of units(text); a text of fewer than n units gives one gram of all of them."""
    u = units(text)
    if not u:
        return set()
    if len(u) < n:
        return {tuple(u)}
    return {tuple(u[i:i + n]) for i in range(len(u) - n + 1)}


class NgramIndex:
    def __init__(self, n: int = 8):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.texts = 0

    def add_texts(self, texts) -> "NgramIndex":
        for t in texts:
            self.grams |= ngrams(t, self.n)
            self.texts += 1
        return self

    def contaminated(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(text, self.n))


def benchmark_files(folder: Path | None = None) -> list[Path]:
    """Evaluation jsonl files of the benchmarks folder (no training sets, no verifier cases)."""
    from r1kit.tasks import benchmarks_dir

    folder = folder or benchmarks_dir()
    if folder is None:
        return []
    return sorted(p for p in Path(folder).glob("*.jsonl") if "train" not in p.name and "verifier" not in p.name)


def benchmark_questions(files: list[Path]) -> list[str]:
    out = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                text = next((row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str)), None)
                if text:
                    out.append(text)
    return out


def eval_index(n: int, tasks=(), files: list[Path] | None = None) -> NgramIndex:
    """An index over the benchmark files (default: all evaluation files found) and the questions of `tasks`
    (e.g. the synthetic test splits)."""
    index = NgramIndex(n)
    index.add_texts(benchmark_questions(benchmark_files() if files is None else files))
    for task in tasks:
        index.add_texts(ex.question for ex in task)
    return index
