"""Stage `base`: pretrain the tiny base model on a synthetic corpus (or reuse an identical one from the cache).

The corpus follows zero.build_base (R1-Zero-template documents of a task; most solutions worked step by step, bare
answers being hasty guesses; the loss on the "choice" token is kept on only enough worked documents to make the
learnt prior to think `choose_frac`), with two additions the later R1 stages need:

- `chat_frac` of the documents are rendered with the R1 chat template (user question, then a thought and the bare
  answer), because a real base (DeepSeek-V3-Base) has seen chat-shaped text. Without them a tiny base cannot
  copy operands out of a chat prompt after a few hundred cold-start examples. The thought is the same mixed-language
  scratchpad and the answer is a bare number, so the readable pattern (a summary with a boxed answer) is still
  something cold-start SFT has to teach.
- the BPE tokenizer is trained on the corpus plus the fixed strings later stages write (the R1 summary line, the
  built-in chats), so Han characters and `\\boxed` get tokens of their own rather than raw bytes.

With task `arith-mix` the worked scratchpads mix English into Chinese, so the base mixes languages. The same stage
with `preset: tiny` (or tiny-qwen2) builds a dense student base from the same documents: the tokenizer is the same.
Bases are cached in `.cache/r1kit/pipeline-base-<hash of the config>`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.errors import R1kitError

CACHE = Path(".cache/r1kit")


@dataclass
class BaseStageConfig:
    task: str = "arith-mix"
    task_kw: dict = field(default_factory=dict)
    preset: str = "tiny-moe"  # any ModelConfig preset: tiny-moe (teacher), tiny / tiny-qwen2 (dense students)
    vocab_size: int = 512  # BPE trained on the corpus
    worked_frac: float = 0.7  # share of solutions that think step by step
    choose_frac: float = 0.2  # learnt prior to think on R1-Zero prompts
    bare_guess: bool = True  # bare answers are quick guesses, usually wrong
    chat_frac: float = 0.3  # share of documents in the R1 chat template (always worked, bare answer)
    steps: int = 2000  # 800 left tiny-moe under-trained: its GRPO was unstable (docs/PIPELINE.md)
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    cache: bool = True  # reuse an identical base from .cache/r1kit

    def __post_init__(self):
        from r1kit.model.config import PRESETS

        if self.preset not in PRESETS:  # checked with the recipe, not when the stage starts
            raise R1kitError(f"preset: unknown preset {self.preset!r} (presets: {', '.join(sorted(PRESETS))})")


def tokenizer_texts(docs: list[tuple[str, str]]) -> list[str]:
    """What the BPE is trained on: the documents and the fixed strings the pipeline writes later."""
    from r1kit.pipeline.filters import SUMMARY
    from r1kit.tasks import CHAT_DATA

    fixed = [s.format(n) for s in SUMMARY.values() for n in range(30)] + [q + " " + a for q, a, _ in CHAT_DATA]
    return [p + c for p, c in docs] + fixed * 20


def build_corpus(task, cfg: BaseStageConfig, tok_factory) -> tuple[object, list]:
    """-> (tokenizer, [(ids, loss_mask)]) for steps * batch_size documents."""
    from r1kit.tokenizer import render_r1

    rng = random.Random(cfg.seed)
    raw = []  # (prompt text, completion text, kind, example)
    for _ in range(cfg.steps * cfg.batch_size):
        ex = task[rng.randrange(len(task))]
        if rng.random() < cfg.chat_frac:
            prompt = render_r1([{"role": "user", "content": ex.question}])  # ends in "<think>\n"
            raw.append((prompt, f"{ex.meta['scratchpad']}\n</think>\n\n{ex.answer}", "chat", ex))
        else:
            worked = rng.random() < cfg.worked_frac
            completion = task.worked_solution(ex) if worked else task.bare_solution(ex, guess=cfg.bare_guess)
            raw.append((task.prompt(ex, template="r1-zero"), " " + completion.lstrip(),
                        "worked" if worked else "bare", ex))
    tok = tok_factory(tokenizer_texts([(p, c) for p, c, _, _ in raw[:4000]]), cfg.vocab_size)
    # the choice token (first where worked and bare completions differ) keeps its loss on all bare documents and on
    # enough worked ones that the learnt prior to think is choose_frac (zero.build_base)
    w = cfg.worked_frac
    keep_choice = cfg.choose_frac * (1 - w) / (w * (1 - cfg.choose_frac)) if 0 < w < 1 else 1.0
    examples = []
    for p, c, kind, ex in raw:
        pi = tok.encode(p) if kind == "chat" else tok.encode(p, add_bos=True)
        ci = tok.encode(c) + [tok.eos_id]
        mask = [0] * len(pi) + [1] * len(ci)
        if kind == "worked" and rng.random() > keep_choice:
            bare = tok.encode(" " + task.bare_solution(ex, guess=cfg.bare_guess).lstrip())
            choice = next(i for i, (a, b) in enumerate(zip(ci, bare)) if a != b)
            mask[len(pi) + choice] = 0
        examples.append((pi + ci, mask))
    return tok, examples


def build_base(cfg: BaseStageConfig, log=print):
    """Pretrain (or load the cached) base -> (model, tokenizer)."""
    from r1kit.checkpoint.hf import load_model, save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tasks import get_task
    from r1kit.sft import SFTConfig, train
    from r1kit.tokenizer import Tokenizer

    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg) | {"cache": None}, sort_keys=True).encode())
    folder = CACHE / f"pipeline-base-{key.hexdigest()[:12]}"
    if cfg.cache and (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        log(f"  reusing the cached base {folder}")
        return load_model(folder), Tokenizer.from_file(folder)
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task, "train", **cfg.task_kw)
    tok, examples = build_corpus(task, cfg, Tokenizer.train_bpe)
    mcfg = ModelConfig.from_name(cfg.preset).replace(vocab_size=tok.vocab_size, bos_id=tok.bos_id,
                                                     eos_id=tok.eos_id)
    model = Transformer(mcfg)
    log(f"  pretraining {cfg.preset} ({model.num_params():,} parameters) on {len(examples):,} documents "
        f"({cfg.chat_frac:.0%} chat-template)")
    t0 = time.time()

    def show(step, st):
        if (step + 1) % 200 == 0:
            log(f"  pretrain step {step + 1}/{cfg.steps} loss {st['loss']:.3f}")

    train(model, examples, SFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=50,
                                     seed=cfg.seed), log=show)
    if cfg.cache:
        save_model(model, folder)
        tok.save(folder)
    log(f"  base pretrained in {time.time() - t0:.0f}s")
    return model, tok


def run(cfg: BaseStageConfig, inputs: dict, out: Path, ctx):
    from r1kit.pipeline import modelio
    from r1kit.pipeline.runner import StageResult

    model, tok = build_base(cfg, ctx.log)
    modelio.save(model, tok, out / "model", template="r1-zero", preset=cfg.preset)
    return StageResult({"model": "model"}, {"params": model.num_params(), "vocab": tok.vocab_size,
                                            "preset": cfg.preset})
