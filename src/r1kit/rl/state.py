"""Training checkpoints that survive `kill -9`: each is written to a temporary folder, then renamed into place.

A checkpoint folder `checkpoint-000040/` holds the policy in the HF layout (loadable by any r1kit or transformers
tool) and `trainer_state.pt`: the step, optimiser state, reference model and RNG states. Data order and sampling
seeds derive from (seed, step), so the step number is all the data state there is.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import torch

from r1kit.checkpoint.hf import load_state_dict, save_model, from_hf_key

PATTERN = re.compile(r"checkpoint-(\d{6})$")


def save_state(run_dir: Path, step: int, policy, ref, opt, keep_last: int = 2, extra: dict | None = None,
               tokenizer=None) -> Path:
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step:06d}"
    tmp = run_dir / f".tmp-checkpoint-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    from r1kit.train import lora
    if lora.is_lora(policy):  # the merged weights (loadable anywhere) and the adapter the run resumes from
        save_model(lora.merged(policy), tmp)
        lora.save_adapter(policy, tmp / "adapter")
    else:
        save_model(policy, tmp)
    if tokenizer is not None:  # a checkpoint is self-contained: generate, eval and serve load it as is
        tokenizer.save(tmp)
    state = {"step": step, "optimizer": opt.state_dict(), "ref": ref.state_dict() if ref is not None else None,
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "extra": extra or {}}
    torch.save(state, tmp / "trainer_state.pt")
    _fsync_dir(tmp)
    if final.exists():  # a rerun of the same step after a crash: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    for old in checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and PATTERN.match(p.name))


def load_state(path: Path, policy, ref, opt) -> dict:
    """Restore policy, reference model, optimiser and RNGs in place; returns the saved state (step, extra)."""
    from r1kit.train import lora

    path = Path(path)
    if lora.is_lora(policy):
        lora.load_adapter(policy, path / "adapter")
    else:
        weights = {from_hf_key(k, policy.cfg): v for k, v in load_state_dict(path).items()}
        weights = {k: v for k, v in weights.items() if k is not None}
        missing, unexpected = policy.load_state_dict(weights, strict=False)
        missing = [m for m in missing if not (m == "lm_head.weight" and policy.cfg.tie_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"{path}: checkpoint mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    if ref is not None and state["ref"] is not None:
        ref.load_state_dict(state["ref"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
