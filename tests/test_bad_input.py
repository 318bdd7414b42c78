"""Every documented kind of bad input gets one line on stderr and exit status 2, through the real CLI, with no
traceback and before any work starts."""
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import r1kit

SRC = str(Path(r1kit.__file__).resolve().parents[1])


def _limit_memory():  # a check that failed would otherwise let the child try to allocate terabytes
    resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, 16 * 2**30))


def run_cli(cwd: Path, *args: str, timeout: float = 120):
    p = subprocess.run([sys.executable, "-m", "r1kit.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
                       preexec_fn=_limit_memory)
    return p.returncode, p.stderr


def tiny_checkpoint(folder: Path) -> Path:
    from r1kit.checkpoint.hf import save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tokenizer import Tokenizer

    save_model(Transformer(ModelConfig.from_name("tiny")), folder)
    Tokenizer.builtin().save(folder)
    return folder


def recipe(tmp: Path, base_config: dict | None = None, stages: list | None = None) -> str:
    """A one-stage recipe (a small base) with a tiny evaluation; `base_config` entries replace the defaults."""
    cfg = {"task": "arith", "preset": "tiny", "vocab_size": 300, "steps": 1, "batch_size": 2, "cache": False}
    cfg |= base_config or {}
    data = {"name": "bad", "eval": {"task": "arith", "problems": 1, "k": 1, "max_new_tokens": 4},
            "stages": stages if stages is not None else [{"name": "base", "kind": "base", "config": cfg}]}
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return str(path)


def nan_checkpoint(tmp: Path) -> str:
    ck = tiny_checkpoint(tmp / "nan")
    sd = load_file(ck / "model.safetensors")
    sd["model.layers.1.mlp.down_proj.weight"][0, 3] = float("nan")
    save_file(sd, ck / "model.safetensors", metadata={"format": "pt"})
    return str(ck)


def huge_config(tmp: Path) -> str:
    ck = tiny_checkpoint(tmp / "huge")
    cfg = json.loads((ck / "config.json").read_text())
    cfg |= {"hidden_size": 10**6, "intermediate_size": 10**6}  # ~6e12 parameters
    (ck / "config.json").write_text(json.dumps(cfg))
    return str(ck)


def a_file(tmp: Path) -> str:
    (tmp / "file").write_text("not a folder")
    return str(tmp / "file")


# (id, function of tmp_path -> argv, text the one line must contain)
CASES = [
    ("pipeline-run-dir-in-proc", lambda t: ["pipeline", recipe(t), "--run-dir", "/proc/x"], "/proc/x"),
    ("pipeline-run-dir-under-a-file", lambda t: ["pipeline", recipe(t), "--run-dir", a_file(t) + "/run"], "file/run"),
    ("pipeline-threads-negative", lambda t: ["pipeline", recipe(t), "--threads", "-1"], "--threads"),
    ("recipe-unknown-preset", lambda t: ["pipeline", recipe(t, {"preset": "tiny-moee"}), "--run-dir", "run"],
     "tiny-moee"),
    ("recipe-stage-is-a-string", lambda t: ["pipeline", recipe(t, stages=["base"]), "--run-dir", "run"], "stage 0"),
    ("recipe-config-is-a-string", lambda t: ["pipeline", recipe(t, stages=[{"name": "base", "kind": "base",
                                                                            "config": "tiny"}]), "--run-dir", "run"],
     "stage 0.config"),
    ("recipe-steps-fractional", lambda t: ["pipeline", recipe(t, {"steps": 2.7}), "--run-dir", "run"], "steps"),
    ("recipe-steps-negative", lambda t: ["pipeline", recipe(t, {"steps": -3}), "--run-dir", "run"], "steps"),
    ("recipe-lr-bool", lambda t: ["pipeline", recipe(t, {"lr": True}), "--run-dir", "run"], "lr"),
    ("recipe-eval-count-negative", lambda t: ["pipeline", _with_eval(recipe(t), {"problems": -1}), "--run-dir",
                                              "run"], "problems"),
    ("generate-n-negative", lambda t: ["generate", "tiny", "-n", "-2"], "-n"),
    ("zero-steps-fractional", lambda t: ["zero", "--steps", "2.7"], "--steps"),
    ("zero-group-size-1", lambda t: ["zero", "--group-size", "1", "--run-dir", "run"], "--group-size"),
    ("zero-lr-negative", lambda t: ["zero", "--lr", "-1", "--run-dir", "run"], "--lr"),
    ("zero-mini-batches-above-rollouts", lambda t: ["zero", "--mini-batches", "999", "--run-dir", "run"],
     "--mini-batches"),
    ("zero-jsonl-without-data", lambda t: ["zero", "--task", "jsonl", "--run-dir", "run"], "--data"),
    ("plan-device", lambda t: ["plan", "tiny", "--device", "tpu"], "--device"),
    ("nan-weights", lambda t: ["generate", nan_checkpoint(t), "--max-new-tokens", "2"],
     "model.layers.1.mlp.down_proj.weight"),
    ("absurd-config-size", lambda t: ["generate", huge_config(t), "--max-new-tokens", "2"], "config.json"),
]


def _with_eval(path: str, settings: dict) -> str:
    data = json.loads(Path(path).read_text())
    data["eval"] |= settings
    Path(path).write_text(json.dumps(data))
    return path


def assert_one_line_exit_2(code: int, err: str, needle: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, f"exit {code}:\n{err}"
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, argv, needle):
    code, err = run_cli(tmp_path, *argv(tmp_path), timeout=90)
    assert_one_line_exit_2(code, err, needle)
    assert not (tmp_path / "run" / "base").exists()  # recipes are checked before any stage starts


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch can use CUDA")
def test_cuda_device_on_a_cpu_build(tmp_path):
    code, err = run_cli(tmp_path, "generate", tiny_checkpoint(tmp_path / "ck").name, "--device", "cuda")
    assert_one_line_exit_2(code, err, "cuda")


@pytest.mark.parametrize("where", ["/proc/x", "FILE/run"])
def test_zero_run_dir_that_cannot_be_created(tmp_path, where):
    code, err = run_cli(tmp_path, "zero", "--run-dir", where.replace("FILE", a_file(tmp_path)), timeout=60)
    assert_one_line_exit_2(code, err, where.replace("FILE", ""))


def test_prepare_run_dir(tmp_path):
    from r1kit.errors import R1kitError
    from r1kit.runs import prepare_run_dir

    assert prepare_run_dir(tmp_path / "a" / "b", resume=False).is_dir()
    (tmp_path / "a" / "b" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(R1kitError, match="not empty"):
        prepare_run_dir(tmp_path / "a" / "b", resume=False)
    assert prepare_run_dir(tmp_path / "a" / "b", resume=True) == tmp_path / "a" / "b"
    with pytest.raises(R1kitError, match="is not a folder"):
        prepare_run_dir(tmp_path / "a" / "b" / "metrics.jsonl", resume=True)
    with pytest.raises(R1kitError, match="cannot create"):
        prepare_run_dir(tmp_path / "a" / "b" / "metrics.jsonl" / "run", resume=True)


def test_recipe_values_are_typed_not_converted():
    """The checker behind the recipe cases above: numbers from YAML strings parse, wrong types never convert."""
    from r1kit.checks import typed
    from r1kit.errors import R1kitError

    assert typed("3e-4", float, "lr") == 3e-4 and typed(2, float, "lr") == 2.0 and typed("12", int, "steps") == 12
    assert typed(["a", "b"], tuple[str, ...], "x") == ("a", "b") and typed(None, dict, "config") == {}
    assert typed(None, int | None, "seed") is None and typed(3, int | None, "seed") == 3
    for value, tp, needle in [(True, float, "finite number"), (float("nan"), float, "finite number"),
                              (2.7, int, "integer"), (-3, int, ">= 0"), (True, int, "integer"), ("yes", bool, "true"),
                              (5, str, "string"), ("base", dict, "mapping"), ([1, "x"], list[int], "x[1]")]:
        with pytest.raises(R1kitError, match=re.escape(needle)):
            typed(value, tp, "x")
