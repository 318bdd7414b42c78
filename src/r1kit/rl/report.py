"""The R1-Zero run report: before/after tables, accuracy by behaviour, PNG curves of what the paper shows (Fig. 3,
C.2) and sample completions over training; plus the mean and std of several seeds' runs."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# training curves (metrics.jsonl, every step) and held-out curves (every evaluation, step 0 = the base)
TRAIN_CURVES = [("reward", "reward"), ("kl", "KL to the reference"), ("entropy", "entropy (nats/token)"),
                ("clip_frac", "clipped token fraction"), ("length_mean", "response length (tokens)"),
                ("reflection_rate", "reflective words per response")]
HELDOUT_CURVES = [("heldout_pass@1", "held-out pass@1"), ("heldout_length", "held-out response length"),
                  ("heldout_reflection_rate", "held-out reflective words per response"),
                  ("heldout_thought", "held-out share that thinks")]


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    pts = []
    for r in rows:
        v = r.get("clip_low", 0) + r.get("clip_high", 0) if key == "clip_frac" and "clip_low" in r else r.get(key)
        if isinstance(v, (int, float)):
            pts.append((r["step"], v))
    return pts


def _heldout_rows(rows: list[dict], before: dict) -> list[dict]:
    start = {"step": 0, "heldout_pass@1": before["pass@1"], "heldout_length": before["length"],
             "heldout_reflection_rate": before["reflection_rate"],
             "heldout_thought": 1 - before["split"]["no thought"]["share"]}
    return [start] + [r for r in rows if "heldout_pass@1" in r]


def plot(run: Path, rows: list[dict], before: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = []
    for fname, curves, source in (("training_curves.png", TRAIN_CURVES, rows),
                                  ("heldout_curves.png", HELDOUT_CURVES, _heldout_rows(rows, before))):
        fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), dpi=100)
        for ax, (key, label) in zip(axes, curves):
            pts = _points(source, key)
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, lw=1.2, ms=3)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("GRPO step", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run / fname)
        plt.close(fig)
        names.append(fname)
    return names


def length_growth(rows: list[dict], before: dict) -> dict:
    """How the held-out length rose: over how many evaluations, and the largest single rise as a share of the whole
    (1.0 = all in one jump between two evaluations)."""
    pts = [v for _, v in _points(_heldout_rows(rows, before), "heldout_length")]
    rise = pts[-1] - pts[0]
    steps = [b - a for a, b in zip(pts, pts[1:])]
    return {"points": len(pts), "rise": rise, "largest_jump_share": max(steps) / rise if rise > 0 and steps else None,
            "rising_intervals": sum(s > 0 for s in steps)}


def _split_table(b: dict, a: dict) -> list[str]:
    lines = ["| held-out responses | base: share | base: pass@1 | after: share | after: pass@1 |",
             "|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    for k in b["split"]:
        lines.append(f"| {k} | {fmt(b['split'][k]['share'])} | {fmt(b['split'][k]['pass@1'])} | "
                     f"{fmt(a['split'][k]['share'])} | {fmt(a['split'][k]['pass@1'])} |")
    return lines


def _samples(run: Path) -> list[str]:
    path = run / "samples.jsonl"
    if not path.exists():
        return []
    by_step: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], [])
        if len(by_step[row["step"]]) < 4:  # a resumed run re-evaluates: keep the first rows of a step
            by_step[row["step"]].append(row)
    steps = sorted(by_step)
    shown = sorted({steps[round(i * (len(steps) - 1) / 3)] for i in range(4)}) if steps else []
    out = ["## Sample completions", "",
           "The first sample for the same held-out questions at evaluations across training (all in samples.jsonl "
           "and TensorBoard's text tab).", ""]
    for s in shown:
        out += [f"Step {s}:", "", "```"] + [f"[{'right' if r['correct'] else 'wrong'}] {r['question']} ->"
                                           f" {r['completion']}" for r in by_step[s]] + ["```", ""]
    return out


def write(run: Path, summary: dict, rows: list[dict]) -> Path:
    b, a = summary["before"], summary["after"]
    pngs = plot(run, rows, b)
    growth = summary["length_growth"] = length_growth(rows, b)
    ratio = lambda x, y: f"{x / y:.2f}x" if y > 0 else "-"  # noqa: E731
    jump = growth["largest_jump_share"]
    lines = [
        "# R1-Zero run report", "",
        f"{summary['steps']} GRPO steps; the whole job (base model, evaluations, GRPO) took {summary['seconds']:.0f} s,"
        " as measured by this run. Every held-out point samples the same problems with the same settings; step 0 is "
        "the base model.", "",
        "| held-out metric | base | after GRPO | ratio |", "|---|---|---|---|",
        f"| pass@1 | {b['pass@1']:.1%} | {a['pass@1']:.1%} | |",
        f"| mean response length (tokens) | {b['length']:.1f} | {a['length']:.1f} | {ratio(a['length'], b['length'])} |",
        f"| reflective words per response | {b['reflection_rate']:.3f} | {a['reflection_rate']:.3f} | "
        f"{ratio(a['reflection_rate'], b['reflection_rate'])} |",
        f"| share that thinks | {1 - b['split']['no thought']['share']:.1%} | "
        f"{1 - a['split']['no thought']['share']:.1%} | |",
        f"| strict format rate | {b['format']:.1%} | {a['format']:.1%} | |", "",
        f"Length curve: {growth['points']} held-out points, rising in {growth['rising_intervals']} of "
        f"{growth['points'] - 1} intervals; the largest single rise is "
        f"{'-' if jump is None else f'{jump:.0%}'} of the total.", "",
        "## Accuracy by behaviour", "", *_split_table(b, a), "",
        "## Curves", "", *[f"![{p}]({p})" for p in pngs], "", *_samples(run)]
    (run / "report.md").write_text("\n".join(lines) + "\n")
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return run / "report.md"


HEADLINE = {"pass@1 base": ("before", "pass@1"), "pass@1 after": ("after", "pass@1"),
            "length base": ("before", "length"), "length after": ("after", "length"),
            "reflective words base": ("before", "reflection_rate"),
            "reflective words after": ("after", "reflection_rate")}


def headline(summary: dict) -> dict:
    """The figures a run is judged by, flat."""
    out = {k: summary[w][m] for k, (w, m) in HEADLINE.items()}
    # a ratio over a base of 0 (no reflective word at step 0) has no value: None, not a huge number
    out["length ratio"] = out["length after"] / out["length base"] if out["length base"] else None
    out["reflection ratio"] = (out["reflective words after"] / out["reflective words base"]
                               if out["reflective words base"] else None)
    out["largest length jump share"] = summary.get("length_growth", {}).get("largest_jump_share")
    out["seconds"] = summary["seconds"]
    return out


def seed_stats(values: list) -> dict:
    """Mean and std over the seeds where the figure has a value (None elsewhere, and `n` says how many)."""
    have = [v for v in values if v is not None and math.isfinite(v)]
    return {"values": values, "n": len(have), "mean": statistics.fmean(have) if have else None,
            "std": statistics.stdev(have) if len(have) > 1 else (0.0 if have else None)}


def fmt_figure(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_seeds(run: Path, summaries: list[dict]) -> Path:
    """RUN/summary.json and summary.md: each headline figure's per-seed values, mean and std."""
    figs = [headline(s) for s in summaries]
    table = {k: seed_stats([f[k] for f in figs]) for k in figs[0]}
    (run / "summary.json").write_text(json.dumps({"seeds": len(figs), "figures": table}, indent=2) + "\n")
    lines = [f"# R1-Zero over {len(figs)} seeds", "", "| figure | mean ± std | per seed |", "|---|---|---|"]
    for k, t in table.items():
        n = "" if t["n"] == len(figs) else f" (over {t['n']})"
        per_seed = ", ".join(map(fmt_figure, t["values"]))
        lines.append(f"| {k} | {fmt_figure(t['mean'])} ± {fmt_figure(t['std'])}{n} | {per_seed} |")
    (run / "summary.md").write_text("\n".join(lines) + "\n")
    return run / "summary.md"
