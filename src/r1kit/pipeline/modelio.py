"""Model folders of the pipeline: an HF checkpoint (config.json, model.safetensors), the tokenizer files with the
prompt template the model was trained for (tokenizer_config.json: `r1kit_template` and the same template as HF
jinja), and `r1kit_pipeline.json` with the stage's provenance (init, steps)."""
from __future__ import annotations

import json
from pathlib import Path

META = "r1kit_pipeline.json"


def save(model, tok, folder: Path, template: str, **meta) -> Path:
    from r1kit.checkpoint.hf import save_model
    from r1kit.train import lora

    folder = Path(folder)
    save_model(lora.merged(model) if lora.is_lora(model) else model, folder)  # exported merged
    tok.template = template
    tok.save(folder)
    (folder / META).write_text(json.dumps({"template": template} | meta, indent=2) + "\n")
    return folder


def load(folder: Path):
    """-> (model in fp32 eval mode, tokenizer, meta dict with at least "template")."""
    from r1kit.checkpoint.hf import load_model
    from r1kit.tokenizer import Tokenizer

    folder = Path(folder)
    meta_path = folder / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    tok = Tokenizer.from_file(folder)
    return load_model(folder).float().eval(), tok, meta | {"template": tok.template}
