"""rl/state.py + rl/trainer.py: runs survive crashes. A torn metrics line, a truncated or partial latest
checkpoint, an empty checkpoint folder and a full disk are all survived, and a fallback ends bit-identical to an
uninterrupted run."""
import errno
import json
import shutil

import pytest
import torch

from r1kit.checkpoint.hf import load_state_dict
from r1kit.errors import R1kitError
from r1kit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def ckpt(make_checkpoint):
    return make_checkpoint("tiny")


def train(ckpt, out, steps, logs=None):
    from r1kit.checkpoint.hf import load_model
    from r1kit.rl import trainer
    from r1kit.rl.grpo import GRPOConfig
    from r1kit.tasks import get_task

    def reward(texts, golds, **ctx):
        s = [float(t.count("1") % 3) for t in texts]
        return s, {"accuracy": s}

    task = get_task("arith", split="train", n_terms=2)
    cfg = GRPOConfig(steps=steps, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=1e-2, beta=0.04)
    trainer.train(load_model(ckpt), Tokenizer.from_file(ckpt), task, cfg, out, template="r1-zero",
                  pick=lambda rng, n: [task[i] for i in rng.sample(range(len(task)), n)],
                  reward_for_step=lambda step: reward, ckpt_every=1, keep_last=5,
                  log=(logs.append if logs is not None else lambda *a: None))


@pytest.fixture(scope="module")
def uninterrupted(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    train(ckpt, out, 3)
    return load_state_dict(out / "checkpoint-000003")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["truncated weights", "missing trainer state", "empty folder", "no manifest"])
def test_resume_falls_back_past_a_damaged_latest_checkpoint(ckpt, uninterrupted, tmp_path, damage):
    out = tmp_path / "run"
    train(ckpt, out, 3)
    last = out / "checkpoint-000003"
    if damage == "truncated weights":
        f = last / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "missing trainer state":
        (last / "trainer_state.pt").unlink()
    elif damage == "empty folder":
        shutil.rmtree(last)
        last.mkdir()
    else:
        (last / "manifest.json").unlink()
    logs = []
    train(ckpt, out, 3, logs)
    assert any(line.startswith("skipping checkpoint-000003") for line in logs), logs
    assert "resumed from checkpoint-000002 at step 2" in logs
    assert same(load_state_dict(out / "checkpoint-000003"), uninterrupted)  # bit-identical


def test_torn_metrics_line_is_dropped_on_resume(ckpt, uninterrupted, tmp_path):
    out = tmp_path / "run"
    train(ckpt, out, 2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # what a power cut mid-write leaves
    train(ckpt, out, 3)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert same(load_state_dict(out / "checkpoint-000003"), uninterrupted)


def test_full_disk_is_one_line_and_the_last_checkpoint_survives(ckpt, uninterrupted, tmp_path, monkeypatch):
    import r1kit.rl.state as state

    out = tmp_path / "run"
    train(ckpt, out, 2)
    real = torch.save

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state.torch, "save", full)
    with pytest.raises(R1kitError) as e:
        train(ckpt, out, 3)
    msg = str(e.value)
    assert "no space left" in msg and "checkpoint-000002" in msg and "\n" not in msg
    assert state.problem(out / "checkpoint-000002") is None
    assert not list(out.glob(".tmp-checkpoint-*"))
    monkeypatch.setattr(state.torch, "save", real)
    train(ckpt, out, 3)  # space is back: resumes and finishes
    assert same(load_state_dict(out / "checkpoint-000003"), uninterrupted)


def test_trainer_state_loads_with_weights_only(ckpt, tmp_path):
    out = tmp_path / "run"
    train(ckpt, out, 1)
    saved = torch.load(out / "checkpoint-000001" / "trainer_state.pt", weights_only=True)
    assert saved["step"] == 1
