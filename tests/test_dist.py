"""Data parallelism on PyTorch's own stack, on CPU with gloo: 2 ranks started by torchrun make the same update as
one process with the same global batch, checkpoints resume on another world size, and rank 0 alone writes."""
import json
import os
import subprocess
import time
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
    run(["rm", ckpt, tmp_path / "one", 3])
    run(["rm", ckpt, tmp_path / "two", 3], ranks=2)
    assert_same(load_state_dict(tmp_path / "two"), load_state_dict(tmp_path / "one"))
    assert_same(torch.load(tmp_path / "two" / "rm_head.pt"), torch.load(tmp_path / "one" / "rm_head.pt"))
    assert torch.load(tmp_path / "one" / "rm_head.pt")["weight"].abs().sum() > 0  # it trained (from zeros)
    per_rank = [json.loads((tmp_path / "two" / f"losses.{r}.json").read_text()) for r in (0, 1)]
    assert per_rank[0] == per_rank[1]  # the logged losses are the global ones, equal on both ranks
    assert [round(v, 4) for v in per_rank[0]] == \
        [round(v, 4) for v in json.loads((tmp_path / "one" / "losses.0.json").read_text())]


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


def test_torchrun_zero_pretrains_the_demo_base_together(tmp_path):
    """No --model and a cold cache: both ranks pretrain the tiny base (sharded), rank 0 writes the cache once, and
    nobody waits at a barrier while the other runs collectives."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1kit",
           "zero", "--base-steps", "3", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
           "--max-new-tokens", "6", "--eval-problems", "2", "--run-dir", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    bases = list((tmp_path / ".cache" / "r1kit").glob("base-*"))
    assert len(bases) == 1 and (bases[0] / "tokenizer.json").exists() and (bases[0] / "corpus.json").exists()
    assert p.stdout.count("base pretrained") == 1 and (tmp_path / "run" / "report.md").exists()


# -- r1kit pipeline ------------------------------------------------------------------------------------------------

RECIPE = """
name: dist-tiny
eval: {problems: 4, k: 1, max_new_tokens: 8}
stages:
  - {name: base, kind: base, config: {preset: tiny, steps: 3, batch_size: 4, cache: false}}
  - name: zero
    kind: rl
    inputs: {model: base}
    config: {template: r1-zero, grpo: {steps: 2, prompts_per_step: 2, group_size: 2, max_new_tokens: 8, lr: 1.0e-3}}
  - name: data
    kind: sample
    inputs: {model: zero}
    config: {prompts: 5, k: 2, max_new_tokens: 8, shard_prompts: 3, benchmarks: false, general_frac: 0.0}
  - {name: sft, kind: sft, inputs: {model: zero}, config: {data: CHATS, steps: 2, batch_size: 2, pack_len: 64}}
  - {name: rm, kind: reward_model, inputs: {model: sft}, eval: false,
     config: {n_pairs: 12, steps: 2, batch_size: 4}}
  - name: final
    kind: rl
    inputs: {model: sft, reward_model: rm}
    config: {general_frac: 0.5, rm_last_steps: 1,
             grpo: {steps: 2, prompts_per_step: 2, group_size: 2, max_new_tokens: 8, lr: 1.0e-3}}
  - {name: final_eval, kind: eval, inputs: {model: final}, config: {problems: 4, k: 2, max_new_tokens: 8}}
"""


def pipeline(tmp_path, run_dir, ranks: int):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+1"},
                                                      {"role": "assistant", "content": f"{a + 1}"}]}) + "\n"
                             for a in range(8)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("CHATS", str(chats)))
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", str(ranks)]
    return subprocess.run([*launcher, "-m", "r1kit", "pipeline", str(recipe), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_runs_r1kit_pipeline_like_one_process(tmp_path):
    """Every stage kind under `torchrun ... -m r1kit pipeline`: rank 0 alone writes the records, metrics,
    TensorBoard and report; the weights equal one process's; a second call finds every stage cached."""
    one, two = tmp_path / "one", tmp_path / "two"
    p = pipeline(tmp_path, two, ranks=2)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert p.stdout.count("report: ") == 1 and p.stdout.count("[final] running rl") == 1  # rank 0 alone talks
    assert (two / "report.md").exists()
    for stage in ("base", "zero", "data", "sft", "rm", "final", "final_eval"):
        rec = json.loads((two / stage / "stage.json").read_text())
        assert rec["status"] == "done" and not list((two / stage).glob(".stage.json*"))
    for stage in ("zero", "final"):
        assert [json.loads(x)["step"] for x in (two / stage / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert len(list((two / stage / "tb").glob("events.out.tfevents.*"))) == 1
    for stage in ("sft", "rm"):
        assert len((two / stage / "metrics.jsonl").read_text().splitlines()) == 2
    stats = json.loads(next((two / "data").glob("*.stats.json")).read_text())
    assert stats["samples"] == 10 and len(stats["shards"]) == 2  # 5 prompts x 2, split over the ranks and gathered
    p1 = pipeline(tmp_path, one, ranks=1)
    assert p1.returncode == 0, p1.stdout[-3000:] + p1.stderr[-5000:]
    for stage in ("base/model", "sft/model", "rm/rm"):
        assert_same(load_state_dict(two / stage), load_state_dict(one / stage))
    for stage in ("base", "sft"):  # sharded evaluation, gathered: one process's figures
        assert json.loads((two / stage / "stage.json").read_text())["eval"] == \
            json.loads((one / stage / "stage.json").read_text())["eval"]
    # the last RL step's only signal is the RM's score of one group, whose std is ~1e-3: the group-normalised
    # advantage scales the RM's 1e-6 difference up a thousandfold and Adam's first step moves a weight by up to lr,
    # so here the bound is lr (1e-3), while the rewards themselves agree
    rows = [[json.loads(x) for x in (run / "final/metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    assert "reward/reward_model" in rows[1][-1]  # the RM's score of the general prompts, in the last step
    for a, b in zip(*rows):
        for k in ("reward", "reward/reward_model"):
            assert abs(a.get(k, 0.0) - b.get(k, 0.0)) < 1e-5, k  # logged over every rank's samples
    a, b = load_state_dict(two / "final/model"), load_state_dict(one / "final/model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    again = pipeline(tmp_path, two, ranks=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("cached") == 7 and "running" not in again.stdout


def test_torchrun_pipeline_errors_are_one_line_not_a_hang(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    p = pipeline(tmp_path, blocked, ranks=2)  # found by rank 0 alone (it owns the run folder), said by both
    assert p.returncode != 0
    assert p.stderr.count("exists and is not a folder") == 2 and "/r1kit/" not in p.stderr  # no rank's traceback
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", JOB,
                        "lonely_error", "-", str(tmp_path / "run"), "0"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0 and "r1kit: error: rank 1 gives up alone" in p.stdout and time.time() - t0 < 100
