"""Training checkpoints that survive `kill -9` and resume on any number of processes.

A checkpoint folder `checkpoint-000040/` holds:
- the policy in the HF layout (config.json, model.safetensors, tokenizer): loadable by any r1kit or transformers
  tool as it is (merged weights for a LoRA policy, whose adapter sits in `adapter/`);
- `dcp/`: policy, optimiser and reference as a torch.distributed.checkpoint, written by every rank in parallel
  (sharded under FSDP2) and readable by any world size, one process included;
- `trainer_state.pt`: the step, the RNG states and the caller's `extra`, plain tensors and numbers read back with
  `weights_only=True`.
Each checkpoint is written to a temporary folder, with `manifest.json` (the sha256 of every file) written last,
then renamed into place. Resume takes the newest checkpoint whose manifest verifies and says which ones it
skipped (partial, truncated, empty). A full disk fails with one line and leaves the last good checkpoint as it
was. Data order and sampling seeds derive from (seed, step), so the step number is all the data state there is.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from r1kit.errors import R1kitError
from r1kit.train import dist

PATTERN = re.compile(r"checkpoint-(\d{6})$")


def _trainer_state(policy, ref, opt) -> dict:
    state = {"model": get_model_state_dict(policy), "optim": get_optimizer_state_dict(policy, opt)}
    if ref is not None:
        state["ref"] = get_model_state_dict(ref)
    return state


def save_state(run_dir: Path, step: int, policy, ref, opt, keep_last: int = 2, extra: dict | None = None,
               tokenizer=None) -> Path:
    tmp = Path(run_dir) / f".tmp-checkpoint-{step:06d}"
    try:
        return _save(Path(run_dir), step, policy, ref, opt, keep_last, extra, tokenizer)
    except (Exception, dcp.api.CheckpointException) as e:  # an OSError, or DCP's wrapping of one per rank
        if dist.current().main:
            shutil.rmtree(tmp, ignore_errors=True)
        causes = [e, *(pair[0] for pair in getattr(e, "failures", {}).values())]
        if any(isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT) for c in causes):
            good = [p.name for p in checkpoints(run_dir)]
            raise R1kitError(f"{run_dir}: no space left on the device while writing checkpoint {step}; "
                             f"{'the last good checkpoint, ' + good[-1] + ', is intact' if good else 'none written'}"
                             f"; free space and rerun with --resume") from None
        raise


def _save(run_dir: Path, step: int, policy, ref, opt, keep_last, extra, tokenizer) -> Path:
    from r1kit.checkpoint.hf import hf_state_dict, save_checkpoint
    from r1kit.train import lora

    d = dist.current()
    final = run_dir / f"checkpoint-{step:06d}"
    tmp = run_dir / f".tmp-checkpoint-{step:06d}"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_trainer_state(policy, ref, opt), checkpoint_id=str(tmp / "dcp"))
    # the HF export: full weights gathered from the shards (a no-op gather with one process), written by rank 0
    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.main:
        if lora.is_lora(policy):
            lora.save_adapter(policy, tmp / "adapter")
            full = lora.merged_state(policy, full)
        save_checkpoint(tmp, policy.cfg, hf_state_dict(policy, full))
        if tokenizer is not None:  # a checkpoint is self-contained: generate, eval and serve load it as is
            tokenizer.save(tmp)
        torch.save({"step": step, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                    "extra": extra or {}, "world": d.world}, tmp / "trainer_state.pt")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: its presence means complete
        _fsync_dir(tmp)
        if final.exists():  # a rerun of the same step after a crash: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        for old in checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and PATTERN.match(p.name))


def problem(path: Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from (None when its manifest verifies)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (empty or partly written)"
    except (OSError, json.JSONDecodeError):
        return "unreadable manifest"
    for name, digest in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum"
    return None


def latest(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that verifies; every newer one that does not is named with the reason."""
    for path in reversed(checkpoints(run_dir)):
        why = problem(path)
        if why is None:
            return path
        log(f"skipping {path.name}: {why}")
    return None


def load_state(path: Path, policy, ref, opt) -> dict:
    """Restore policy, reference model, optimiser and RNGs in place, on however many ranks run now; returns the
    saved state (step, extra)."""
    path = Path(path)
    state = _trainer_state(policy, ref, opt)
    # reshards to this world size; partial: an MoE expert that no token reached yet has no optimiser state
    dcp.load(state, checkpoint_id=str(path / "dcp"), planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    set_model_state_dict(policy, state["model"])
    set_optimizer_state_dict(policy, opt, state["optim"])
    # a parameter that had no optimiser state when saved (an MoE expert no token has reached) must have none now,
    # or Adam's step count would start at 1 instead of 0 and the run would drift from an uninterrupted one
    saved_keys = dcp.FileSystemReader(str(path / "dcp")).read_metadata().state_dict_metadata
    for name, p in policy.named_parameters():
        if p in opt.state and f"optim.state.{name}.step" not in saved_keys:
            del opt.state[p]
    if ref is not None and "ref" in state:
        set_model_state_dict(ref, state["ref"])
    saved = torch.load(path / "trainer_state.pt", weights_only=True)
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(_as_tuple(saved["rng"]["python"]))
    return saved


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
