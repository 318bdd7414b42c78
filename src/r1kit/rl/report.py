"""The R1-Zero run report: a before/after table and PNG plots of the curves the paper shows (Fig. 3, C.2)."""
from __future__ import annotations

import json
from pathlib import Path


def plot(run: Path, rows: list[dict], before: dict | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = [("heldout_pass@1", "held-out pass@1", "heldout_accuracy.png"),
              ("length_mean", "mean response length (tokens)", "response_length.png"),
              ("reflection_rate", "reflective words per response", "reflection_rate.png")]
    names = []
    for key, label, fname in curves:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        start = {"heldout_pass@1": "pass@1", "length_mean": "length", "reflection_rate": "reflection_rate"}
        if before is not None and pts:  # step 0: the base model, measured on the full held-out set
            pts.insert(0, (0, before[start[key]]))
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
        ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, lw=1.5)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run / fname)
        plt.close(fig)
        names.append(fname)
    return names


def write(run: Path, summary: dict, rows: list[dict]) -> Path:
    b, a = summary["before"], summary["after"]
    pngs = plot(run, rows, b)
    ratio = a["length"] / max(b["length"], 1e-9)
    lines = [
        "# R1-Zero run report", "",
        f"{summary['steps']} GRPO steps; the whole job (base model, evaluations, GRPO) took {summary['seconds']:.0f} s,"
        " as measured by this run. Step 0 of each curve is the base model.", "",
        "| held-out metric | base | after GRPO |", "|---|---|---|",
        f"| pass@1 | {b['pass@1']:.1%} | {a['pass@1']:.1%} |",
        f"| mean response length (tokens) | {b['length']:.1f} | {a['length']:.1f} ({ratio:.2f}x) |",
        f"| strict format rate | {b['format']:.1%} | {a['format']:.1%} |",
        f"| reflective words per response | {b['reflection_rate']:.3f} | {a['reflection_rate']:.3f} |", "",
        "## A held-out sample", "", "Before:", "", "```", b["sample"], "```", "", "After:", "", "```",
        a["sample"], "```", "",
    ]
    lines += ["## Curves", ""] + [f"![{p}]({p})" for p in pngs]
    (run / "report.md").write_text("\n".join(lines) + "\n")
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run / "report.md"
