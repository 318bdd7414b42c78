"""Model folders of the pipeline: an HF checkpoint (config.json, model.safetensors), the tokenizer files, and
`r1kit_pipeline.json`, which records the prompt template the model was trained for ("r1-zero" or "r1"), so
sampling and evaluation never guess it from a folder name (which breaks on the first renamed folder)."""
from __future__ import annotations

import json
from pathlib import Path

META = "r1kit_pipeline.json"


def save(model, tok, folder: Path, template: str, **meta) -> Path:
    from r1kit.checkpoint.hf import save_model

    folder = Path(folder)
    save_model(model, folder)
    tok.save(folder)
    (folder / META).write_text(json.dumps({"template": template} | meta, indent=2) + "\n")
    return folder


def load(folder: Path):
    """-> (model in fp32 eval mode, tokenizer, meta dict with at least "template")."""
    from r1kit.checkpoint.hf import load_model
    from r1kit.tokenizer import Tokenizer

    folder = Path(folder)
    meta_path = folder / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"template": "r1-zero"}
    return load_model(folder).float().eval(), Tokenizer.from_file(folder), meta


def template_of(folder: Path) -> str:
    meta_path = Path(folder) / META
    return json.loads(meta_path.read_text())["template"] if meta_path.exists() else "r1-zero"
