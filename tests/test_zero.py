"""The R1-Zero job end to end at toy size: run folder contents, and exact resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

ARGS = ["--steps", "4", "--ckpt-every", "1", "--base-steps", "20", "--prompts-per-step", "2", "--group-size", "4",
        "--max-new-tokens", "12", "--eval-problems", "4", "--eval-every", "3"]


def zero(cwd, run_dir, *extra, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "r1kit.cli", "zero", "--run-dir", str(run_dir), *ARGS, *extra],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def weights(run_dir, step):
    return load_file(str(run_dir / f"checkpoint-{step:06d}" / "model.safetensors"))


def test_run_folder_and_resume_after_kill(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    p = zero(tmp_path, a)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    for name in ["metrics.jsonl", "report.md", "summary.json", "run.json", "training_curves.png",
                 "heldout_curves.png", "samples.jsonl", "checkpoint-000004/model.safetensors",
                 "checkpoint-000004/config.json", "checkpoint-000004/trainer_state.pt",
                 "checkpoint-000004/tokenizer.json"]:
        assert (a / name).exists(), name
    assert not (a / "checkpoint-000001").exists()  # only the last 2 are kept
    assert list((a / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ["reward", "reward/accuracy", "reward/format", "policy_loss", "kl", "clip_low", "clip_high",
                "entropy", "length_mean", "length_max", "frac_reward_zero_std", "reflection_rate", "tokens_per_s",
                "step_time"]:
        assert key in rows[0], key
    report = (a / "report.md").read_text()
    assert "| pass@1 |" in report and "mean response length" in report and "| thought + reflection |" in report
    samples = [json.loads(line) for line in (a / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [0, 3, 4]  # the base, every 3rd step (--eval-every) and the end
    assert {s["question"] for s in samples if s["step"] == 0} == {s["question"] for s in samples if s["step"] == 4}
    summary = json.loads((a / "summary.json").read_text())
    assert summary["length_growth"]["points"] == 3

    # the same run, killed with SIGKILL once step 2 is checkpointed, then resumed
    p = zero(tmp_path, b)
    deadline = time.time() + 600
    while not (b / "checkpoint-000002").exists():
        assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "timeout"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (b / "checkpoint-000004").exists()
    p = zero(tmp_path, b, "--resume")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "resumed from" in out
    wa, wb = weights(a, 4), weights(b, 4)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
    rows_b = [json.loads(line)["step"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert rows_b == [1, 2, 3, 4]


def test_existing_run_dir_needs_resume(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    p = zero(tmp_path, tmp_path / "r")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2
    assert "--resume" in out and "Traceback" not in out


def test_zero_on_a_jsonl_file_holds_out_its_own_split(tmp_path):
    """`--task jsonl --data F` runs end to end, and its held-out problems are a split of F never trained on."""
    from r1kit.checkpoint.hf import save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tasks import get_task
    from r1kit.tokenizer import Tokenizer

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{b}", "answer": str(a + b)}) + "\n"
                            for a in range(10) for b in range(10)))
    ckpt = tmp_path / "ckpt"
    tok = Tokenizer.builtin()
    torch.manual_seed(0)
    save_model(Transformer(ModelConfig.from_name("tiny").replace(bos_id=tok.bos_id, eos_id=tok.eos_id)), ckpt)
    tok.save(ckpt)
    p = subprocess.run([sys.executable, "-m", "r1kit", "zero", "--model", str(ckpt), "--task", "jsonl",
                        "--data", str(data), "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                        "--max-new-tokens", "4", "--eval-problems", "3", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["task_kw"]["holdout"] == "train"
    train = {ex.question for ex in get_task("jsonl", path=str(data), holdout="train")}
    test = {ex.question for ex in get_task("jsonl", path=str(data), holdout="test")}
    assert train and test and not train & test and len(train | test) == 100
