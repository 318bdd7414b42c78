"""Does a check pay on a demo base? On training prompts at T 1, the base answers at once (its bare answer v), then the
same prompt is continued from a forced "<think>v wait," so the base checks its own value step by step.

    .venv/bin/python bench/check_probe.py --seed 0 [--n 200] [--placebo]

Uses the cached demo base of that seed (`r1kit zero --seed N` builds it). If the forced check is far more accurate
than the bare answer, GRPO has a reason to select checking; if not, it has none. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--placebo", action="store_true")
    ap.add_argument("--base-steps", type=int, default=3000, help="the base's pretraining steps (r1kit zero's)")
    args = ap.parse_args()
    from r1kit.checkpoint.hf import load_model
    from r1kit.pipeline.base import cache_folder
    from r1kit.rl import zero as z
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer

    folder = cache_folder(z.demo_base("arith", z.DEMO_TASKS["arith"], args.base_steps, args.seed, args.placebo))
    if not (folder / "config.json").exists():
        raise SystemExit(f"no cached base {folder}: run `r1kit zero --seed {args.seed}` first")
    model, tok = load_model(folder).eval(), Tokenizer.from_file(folder)
    task = get_task("arith", "train", **z.DEMO_TASKS["arith"])
    g = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def sample(ids, n):
        ids, out = list(ids), []
        for _ in range(n):
            nxt = int(torch.multinomial(torch.softmax(model(torch.tensor([ids]))[0, -1], -1), 1, generator=g))
            if nxt == tok.eos_id:
                break
            ids.append(nxt)
            out.append(nxt)
        return tok.decode(out)

    bare = checked = 0.0
    for i in range(args.n):
        ex = task[i]
        prompt = tok.encode(task.prompt(ex, template="r1-zero"), add_bos=True)
        head = " <think></think> <answer>"
        c = head + sample(prompt + tok.encode(head), 8)
        bare += task.evaluate(ex, c)
        v = re.match(r"\s*(-?\d+)", c[len(head):])
        forced = f" <think>{v.group(1) if v else '0'} wait,"
        checked += task.evaluate(ex, forced + sample(prompt + tok.encode(forced), 70))
    print(f"seed {args.seed}: bare {bare / args.n:.3f}, forced check {checked / args.n:.3f}")
    print(json.dumps({"bench": "check_probe", "seed": args.seed, "placebo": args.placebo, "n": args.n,
                      "bare": bare / args.n, "forced_check": checked / args.n, "base": str(folder)}))


if __name__ == "__main__":
    main()
