"""The benchmark files ship with r1kit: package data of the wheel, `data/` in the repository, hashes as documented."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

import r1kit
from r1kit.errors import R1kitError
from r1kit.tasks import BENCHMARKS_ENV, benchmarks_dir, resolve_data_path
from r1kit.tasks.common import packaged_benchmarks

ROOT = Path(__file__).resolve().parents[1]
PKG_DATA = Path(r1kit.__file__).parent / "data"


def _readme_table() -> dict[str, tuple[int, str]]:
    """{file: (rows, sha256)} from the table of the data README."""
    rows = {}
    for line in (PKG_DATA / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `([\w.]+\.jsonl)` \| ([\d,]+) \| [\d,]+ \| `([0-9a-f]{64})` \|", line)
        if m:
            rows[m[1]] = (int(m[2].replace(",", "")), m[3])
    return rows


def test_readme_documents_every_file_with_its_sha256_and_rows():
    table = _readme_table()
    files = sorted(p.name for p in PKG_DATA.glob("*.jsonl"))
    assert files and sorted(table) == files
    for name, (rows, sha) in table.items():
        data = (PKG_DATA / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, name
        assert data.count(b"\n") == rows, name


def test_data_is_declared_package_data_and_linked_from_the_repo_root():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["r1kit.data"]
    for p in PKG_DATA.iterdir():
        if p.name != "__pycache__":
            assert any(fnmatch(p.name, pat) for pat in patterns), f"{p.name} would be left out of the wheel"
    # one copy in the repository: data/ at the root is the package folder
    assert (ROOT / "data").resolve() == (ROOT / "src" / "r1kit" / "data").resolve()


def test_resolver_uses_the_packaged_copy_and_the_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(BENCHMARKS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no shared/ folder above the current directory
    assert benchmarks_dir() == packaged_benchmarks() == PKG_DATA
    assert resolve_data_path("math500.jsonl") == PKG_DATA / "math500.jsonl"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "math500.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    monkeypatch.setenv(BENCHMARKS_ENV, str(mine))
    assert resolve_data_path("math500.jsonl") == mine / "math500.jsonl"
    with pytest.raises(R1kitError, match=r"aime24\.jsonl: data file not found"):  # no silent fall-back
        resolve_data_path("aime24.jsonl")


def test_eval_math500_on_a_copy_of_the_package_with_nothing_beside_it(tmp_path):
    """A fresh clone or an installed wheel: r1kit copied to a folder with no benchmarks anywhere above it."""
    from r1kit.checkpoint.hf import save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tokenizer import Tokenizer

    shutil.copytree(Path(r1kit.__file__).parent, tmp_path / "site" / "r1kit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    save_model(Transformer(ModelConfig.from_name("tiny")), tmp_path / "ckpt")
    Tokenizer.builtin().save(tmp_path / "ckpt")
    env = {k: v for k, v in os.environ.items() if k != BENCHMARKS_ENV}
    env["PYTHONPATH"] = str(tmp_path / "site")
    p = subprocess.run([sys.executable, "-m", "r1kit.cli", "eval", "ckpt", "--bench", "math500", "--limit", "2",
                        "-k", "1", "--max-new-tokens", "8", "--out-dir", "out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "out" / "math500.report.json").read_text())
    assert report["n_problems"] == 2 and report["n_samples"] == 2
