"""Data parallelism on PyTorch's own stack, on CPU with gloo: 2 ranks started by torchrun make the same update as
one process with the same global batch, checkpoints resume on another world size, and rank 0 alone writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1kit.checkpoint.hf import load_state_dict

JOB = str(Path(__file__).with_name("dist_job.py"))


@pytest.fixture(scope="module")
def ckpt(make_checkpoint):
    return make_checkpoint("tiny-moe")


def run(args, ranks: int = 1):
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*launcher, JOB, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def test_grpo_two_ranks_equal_one_and_resume_on_any_world_size(ckpt, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(["grpo", ckpt, one, 3])
    run(["grpo", ckpt, two, 3], ranks=2)
    final = "checkpoint-000003"
    assert_same(load_state_dict(two / final), load_state_dict(one / final))
    base = load_state_dict(ckpt)
    assert any(not torch.equal(base[k], v) for k, v in load_state_dict(one / final).items())  # it trained
    # rank 0 alone writes: one metrics row per step, one TensorBoard file
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1
    # a 2-rank checkpoint at step 2 resumes on 1 rank and on 2 ranks to the uninterrupted weights
    for ranks in (1, 2):
        part = tmp_path / f"part{ranks}"
        run(["grpo", ckpt, part, 2], ranks=2)
        out = run(["grpo", ckpt, part, 3], ranks=ranks)
        assert "resumed from checkpoint-000002 at step 2" in out
        assert_same(load_state_dict(part / final), load_state_dict(one / final))


def test_sft_two_ranks_equal_one(ckpt, tmp_path):
    run(["sft", ckpt, tmp_path / "one", 3])
    run(["sft", ckpt, tmp_path / "two", 3], ranks=2)
    assert_same(load_state_dict(tmp_path / "two"), load_state_dict(tmp_path / "one"))


def test_reward_model_two_ranks_equal_one(ckpt, tmp_path):
    """Bradley-Terry training sharded with FSDP2, each rank scoring its share of the step's pairs."""
    one = run(["rm", ckpt, tmp_path / "one", 3])
    two = run(["rm", ckpt, tmp_path / "two", 3], ranks=2)
    assert_same(load_state_dict(tmp_path / "two"), load_state_dict(tmp_path / "one"))
    assert_same(torch.load(tmp_path / "two" / "rm_head.pt"), torch.load(tmp_path / "one" / "rm_head.pt"))
    assert torch.load(tmp_path / "one" / "rm_head.pt")["weight"].abs().sum() > 0  # it trained (from zeros)
    assert two.count("losses") == 2  # the logged losses are the global ones, equal on both ranks
    lines = sorted(x for x in two.splitlines() if x.startswith("losses"))
    assert lines[0] == lines[1]
    assert [round(float(v), 4) for v in lines[0][8:-1].split(", ")] == \
        [round(float(v), 4) for v in one.strip().splitlines()[-1][8:-1].split(", ")]


def test_torchrun_runs_r1kit_zero_end_to_end(ckpt, tmp_path):
    """The documented command line: torchrun --standalone --nproc_per_node 2 -m r1kit zero ..."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1kit",
           "zero", "--model", str(ckpt), "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
           "--max-new-tokens", "6", "--eval-problems", "4", "--run-dir", str(run_dir)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.count("held-out after GRPO") == 1  # rank 0 alone talks
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    assert (run_dir / "report.md").exists() and (run_dir / "checkpoint-000002" / "model.safetensors").exists()
