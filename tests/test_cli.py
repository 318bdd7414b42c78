"""The CLI as a user sees it: exact integers, and one-line errors without tracebacks."""
import json
import subprocess
import sys

import pytest

from r1kit.cli import main


def run(*args):
    p = subprocess.run([sys.executable, "-m", "r1kit.cli", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("name,total", [("smollm2-135m", "134515008"), ("r1-distill-qwen-1.5b", "1777088000")])
def test_params_dense(capsys, name, total):
    assert main(["params", name]) == 0
    out = capsys.readouterr().out
    assert "total parameters" in out and f" {total} " in out


def test_params_deepseek(capsys):
    assert main(["params", "deepseek-v3-671b"]) == 0
    out = capsys.readouterr().out
    assert " 671026419200 " in out
    assert " 37552297472 " in out and "36.63B without" in out
    mtp_line = next(line for line in out.splitlines() if line.startswith("MTP"))
    assert "11610068224" in mtp_line and "11.61B" in mtp_line
    assert "70,272" in out


def test_params_from_checkpoint_folder(tmp_path, capsys):
    from r1kit.checkpoint.hf import save_model
    from r1kit.model import ModelConfig, Transformer
    save_model(Transformer(ModelConfig.from_name("tiny")), tmp_path)
    assert main(["params", str(tmp_path)]) == 0
    assert " 100672 " in capsys.readouterr().out


def test_help_on_every_command():
    for cmd in ["params", "convert", "demo"]:
        code, out, _ = run(cmd, "--help")
        assert code == 0 and "usage: r1kit " + cmd in out


def _assert_one_line_error(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0]


def test_error_missing_file(tmp_path):
    code, _, err = run("convert", str(tmp_path / "missing.gguf"), str(tmp_path / "out"))
    _assert_one_line_error(code, err, "missing.gguf")


def test_error_unknown_preset():
    code, _, err = run("params", "no-such-model")
    _assert_one_line_error(code, err, "no-such-model")


def test_error_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    code, _, err = run("params", str(tmp_path))
    _assert_one_line_error(code, err, "config.json", "unsupported architecture")


def test_error_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    code, _, err = run("convert", str(bad), str(tmp_path / "out"))
    _assert_one_line_error(code, err, "bad.gguf")


def test_every_subcommand_help_prints(capsys):
    """`r1kit X --help` for every command: a docstring with "90%" once crashed argparse's %-formatting."""
    from r1kit.cli import _commands, build_parser

    for name in _commands():
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0, name
        assert "usage: r1kit " + name in capsys.readouterr().out
