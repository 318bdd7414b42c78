"""Stage `sft`: supervised fine-tuning on chat jsonl, loss on assistant tokens only, with r1kit.sft's loop.

Cold-start SFT, stage-3 SFT (from the base again) and distillation into a student are this one stage with different
inputs: `model` (the initial weights) and `data` (a data stage's jsonl, or the config's `data` file). The loop is
r1kit.sft.train (cosine LR with warm-up, eval loss); what differs from pretraining is only how examples are made:
data.encode_chat (assistant-only masks) and, with `pack`, data.pack (rows of up to `pack_len` tokens, nearly no
padding) trained through data.DocumentMasked (positions and attention per document, so packing is exact). Epochs
set the step count: steps = ceil(epochs * rows / batch_size); sft.train draws each batch at random (seeded), so an
epoch is one pass in expectation rather than an exact pass.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.pipeline.config import file_field
from r1kit.train.lora import LoRAConfig


@dataclass
class SFTStageConfig:
    data: str = file_field()  # chat jsonl used when the stage has no `data` input
    epochs: float = 2.0
    steps: int = 0  # > 0 overrides epochs (e.g. to match another stage's optimiser steps)
    batch_size: int = 16  # rows per step (packed rows when pack is on)
    lr: float = 1e-3
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    pack: bool = True
    pack_len: int = 256
    max_len: int = 512  # longer examples are dropped
    eval_frac: float = 0.05  # held-out chats for the eval loss
    seed: int = 0
    micro_batch_tokens: int = 8192  # padded tokens per forward/backward (gradients accumulate)
    grad_checkpointing: str = "auto"  # on | off | auto
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank 0 = full fine-tune


def run(cfg: SFTStageConfig, inputs: dict, out: Path, ctx):
    from r1kit import sft
    from r1kit.errors import R1kitError
    from r1kit.pipeline import data, modelio
    from r1kit.pipeline.runner import StageResult

    source = inputs.get("data") or cfg.data
    if not source:
        raise R1kitError("sft stage: give a `data` input stage or a `data` file")
    from r1kit.train import dist, lora

    model, tok, _ = modelio.load(inputs["model"])
    if cfg.lora.rank:
        lora.apply(model, cfg.lora)
    chats = data.read_chat_jsonl(source)
    random.Random(cfg.seed).shuffle(chats)
    n_eval = int(len(chats) * cfg.eval_frac) if len(chats) >= 20 else 0
    encode = lambda cs: [ex for c in cs for ex in data.encode_chat(tok, c, cfg.max_len)]  # noqa: E731
    train_ex, eval_ex = encode(chats[n_eval:]), encode(chats[:n_eval])
    if not train_ex:
        raise R1kitError(f"sft stage: no training examples in {source}")
    rows = data.pack(train_ex, cfg.pack_len, cfg.seed) if cfg.pack else train_ex
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    sc = sft.SFTConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=min(cfg.warmup, steps // 2),
                       min_lr_ratio=cfg.min_lr_ratio, weight_decay=cfg.weight_decay, seed=cfg.seed,
                       micro_batch_tokens=cfg.micro_batch_tokens, grad_checkpointing=cfg.grad_checkpointing)
    ctx.log(f"  sft: {len(chats) - n_eval} chats -> {len(train_ex)} examples -> {len(rows)} rows "
            f"(padding {data.padding_fraction(rows, cfg.batch_size):.0%}), {steps} steps")
    trained = data.DocumentMasked(model, tok.bos_id) if cfg.pack else model  # the one difference packing makes
    with dist.main_file(out / "metrics.jsonl") as mf:  # rank 0 writes; every rank trains
        def log(step, st):
            mf.write(json.dumps({"step": step + 1} | st) + "\n")
            if "eval_loss" in st:
                ctx.log(f"  sft step {step + 1}/{steps} loss {st['loss']:.3f} eval_loss {st['eval_loss']:.3f}")

        losses = sft.train(trained, rows, sc, log=log, eval_examples=eval_ex or None)
    metrics = {"steps": steps, "chats": len(chats), "rows": len(rows), "loss": sum(losses[-10:]) / len(losses[-10:])}
    if eval_ex:
        metrics["eval_loss"] = sft.evaluate(trained, eval_ex, cfg.batch_size)
    modelio.save(model, tok, out / "model", template="r1", adapter=out / "adapter", init=str(inputs["model"]),
                 sft_steps=steps, lora=lora.config_dict(model))  # merged weights; the adapter itself beside them
    return StageResult({"model": "model"}, metrics)
