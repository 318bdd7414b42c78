"""The pipeline report: a summary table (printed with rich) and report.md in the run folder."""
from __future__ import annotations

import os
import time
from pathlib import Path

COLUMNS = ("stage", "kind", "status", "wall s", "CPU s", "eval CPU s", "pass@1", "mean length", "lang consistency",
           "format", "notes")
NOTE_KEYS = ("steps", "rows", "kept", "yield", "eval_loss", "heldout_acc", "reward_last5", "language_last5",
             "reward_model_last5", "params")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def rows(records) -> list[list[str]]:
    out = []
    for r in records:
        ev = r.eval or (r.metrics if r.kind == "eval" else {})
        get = lambda k: _fmt(ev[k]) if k in ev else ""  # noqa: E731
        notes = ", ".join(f"{k} {_fmt(r.metrics[k])}" for k in NOTE_KEYS if k in r.metrics)
        out.append([r.name, r.kind, r.status, f"{r.seconds:.0f}", f"{r.cpu_seconds:.0f}",
                    f"{r.eval_cpu_seconds:.0f}" if r.eval_cpu_seconds else "", get("pass@1"), get("length"),
                    get("lang_consistency"), get("format"), notes])
    return out


def print_table(records, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("stage", "kind", "status", "notes") else "right")
    for row in rows(records):
        table.add_row(*row)
    Console().print(table)


def comparison(records, names: list[str]) -> list[str]:
    """The distillation claim: each named stage's pass@1 and optimiser steps, reported plainly."""
    by = {r.name: r for r in records}
    if len(names) != 2 or any(n not in by for n in names):
        return []
    a, b = by[names[0]], by[names[1]]
    pa, pb = a.eval.get("pass@1"), b.eval.get("pass@1")
    if pa is None or pb is None:
        return []
    lines = ["## Distillation vs RL on the same student", "",
             "| student trained by | stage | optimiser steps | pass@1 | mean length |", "|---|---|---|---|---|",
             f"| {a.kind} | {a.name} | {a.metrics.get('steps', '?')} | {pa:.3f} | {a.eval.get('length', 0):.1f} |",
             f"| {b.kind} | {b.name} | {b.metrics.get('steps', '?')} | {pb:.3f} | {b.eval.get('length', 0):.1f} |",
             ""]
    if a.metrics.get("steps") != b.metrics.get("steps"):
        lines += ["Note: the two stages did not take the same number of optimiser steps.", ""]
    winner = a.name if pa > pb else b.name if pb > pa else None
    lines += [f"At this scale {winner} is ahead by {abs(pa - pb):.3f} pass@1." if winner else
              "At this scale the two are level.", ""]
    return lines


def write(run_dir: Path, records, recipe, seconds: float) -> Path:
    import torch

    lines = [f"# Pipeline report: {recipe.name}", "",
             f"Recipe `{recipe.source}`, run folder `{run_dir}`, written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
             f"This call took {seconds:.0f} s; stage times below are those of the call that ran each stage "
             f"(cached stages keep their original times). Machine: {os.cpu_count()} CPU cores, torch threads "
             f"{torch.get_num_threads()}, load average at the end {os.getloadavg()[0]:.2f} (other work on the "
             f"machine slows every stage).", "",
             f"Evaluation after each model stage: {recipe.eval}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(records)]
    wall = sum(r.seconds + r.eval_seconds for r in records)
    cpu = sum(r.cpu_seconds + r.eval_cpu_seconds for r in records)
    lines += ["", f"Sum over stages and evaluations: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} CPU s "
              f"({cpu / 60:.1f} min). CPU seconds are what the work costs; wall seconds also count waiting for a "
              f"busy CPU.", ""]
    lines += comparison(records, list(recipe.report.get("compare", [])))
    lines += ["## Samples (first held-out sample after each stage)", ""]
    for r in records:
        if r.eval.get("sample") is not None:
            lines += [f"**{r.name}** ({r.eval.get('template')}):", "", "```", r.eval["sample"].strip(), "```", ""]
    lines += ["## Stage metrics", ""]
    for r in records:
        lines.append(f"- **{r.name}** ({r.kind}, key `{r.key[:12]}`): " +
                     ", ".join(f"{k} {_fmt(v)}" for k, v in r.metrics.items()))
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
