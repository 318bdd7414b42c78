"""The demo's reflection control: R1-Zero on the demo base whose "wait" checks fix a wrong first value, against the
same recipe on a placebo base whose checks never fix anything: they restate the first value ("40 wait, 40"), which
stays the answer.

    .venv/bin/python bench/zero_placebo.py [--seeds 3] [--out runs/placebo-bench] [--threads 1]

Each arm is `r1kit zero --seeds N` (base pretraining included, seeds 0..N-1), the placebo arm with `--placebo`; the
two corpora differ only in the checks: worked out in one, restated in the other. The two arms run at the same
time, each with --threads threads. If reflection rises because it pays, the reflective-word rate rises in the real
arm and not in the placebo arm. Prints per arm the mean and std over seeds of the held-out reflective words per
response before and after GRPO, pass@1 and length; the last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def start(out: Path, seeds: int, threads: int, placebo: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "r1kit", "zero", "--run-dir", str(out), "--seeds", str(seeds)]
    if placebo:
        cmd.append("--placebo")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, env=env, stdout=open(f"{out}.log", "w"), stderr=subprocess.STDOUT)


def figures(out: Path, seeds: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    if seeds > 1:
        return summary["figures"]
    from r1kit.rl.report import headline, seed_stats  # one seed: the run's own summary
    return {k: seed_stats([v]) for k, v in headline(summary).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/placebo-bench")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"--out {out} is not empty; pick a new folder")
    t0 = time.time()
    procs = {name: start(out / name, args.seeds, args.threads, name == "placebo") for name in ("checks", "placebo")}
    for name, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"the {name} arm failed: see {out / name}.log")
    from r1kit.rl.report import fmt_figure as fmt

    res = {name: {"figures": figures(out / name, args.seeds), "seconds": time.time() - t0} for name in procs}
    keys = ("reflective words base", "reflective words after", "reflection ratio", "pass@1 base", "pass@1 after",
            "length ratio")
    for name, r in res.items():
        print(f"{name}: " + ", ".join(f"{k} {fmt(r['figures'][k]['mean'])} ± {fmt(r['figures'][k]['std'])}"
                                      for k in keys))
    print(json.dumps({"bench": "zero_placebo", "seeds": args.seeds, "machine": platform.processor() or
                      platform.machine(), "cpus": os.cpu_count(), **{n: {k: r["figures"][k] for k in keys} |
                                                                      {"seconds": r["seconds"]}
                                                                      for n, r in res.items()}}))


if __name__ == "__main__":
    main()
