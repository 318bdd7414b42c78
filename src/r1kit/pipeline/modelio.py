"""Model folders of the pipeline: an HF checkpoint (config.json, model.safetensors), the tokenizer files with the
prompt template the model was trained for (tokenizer_config.json: `r1kit_template` and the same template as HF
jinja), and `r1kit_pipeline.json` with the stage's provenance (init, steps)."""
from __future__ import annotations

import json
from pathlib import Path

META = "r1kit_pipeline.json"


def save(model, tok, folder: Path, template: str, state: dict | None = None, adapter: Path | None = None,
         **meta) -> Path:
    """Write a model folder (merged weights for a LoRA model; its PEFT adapter into `adapter` if given).

    state: the model's full state dict, when the caller already has it. Under torchrun every rank calls this: a
    sharded model's full weights are gathered to rank 0, which alone writes, and every rank returns once the
    folder is complete (or raises rank 0's error)."""
    from r1kit.checkpoint.hf import hf_state_dict, save_checkpoint, save_model
    from r1kit.train import dist, lora

    folder = Path(folder)
    full = state if state is not None else dist.full_state_dict(model) if dist.is_sharded(model) else None
    tok.template = template

    def write() -> Path:
        if full is None:  # a plain model (one process)
            save_model(lora.merged(model) if lora.is_lora(model) else model, folder)  # exported merged
        else:
            save_checkpoint(folder, model.cfg,
                            hf_state_dict(model, lora.merged_state(model, full) if lora.is_lora(model) else full))
        if adapter is not None and lora.is_lora(model):
            lora.save_adapter(model, adapter, base=str(meta.get("init", "")), state=full)
        tok.save(folder)
        (folder / META).write_text(json.dumps({"template": template} | meta, indent=2) + "\n")
        return folder

    return dist.on_main(write)


def load(folder: Path):
    """-> (model in fp32 eval mode, tokenizer, meta dict with at least "template")."""
    from r1kit.checkpoint.hf import load_model
    from r1kit.tokenizer import Tokenizer

    folder = Path(folder)
    meta_path = folder / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    tok = Tokenizer.from_file(folder)
    return load_model(folder).float().eval(), tok, meta | {"template": tok.template}
