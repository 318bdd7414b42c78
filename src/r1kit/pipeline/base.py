"""The tiny base model: pretrained on a synthetic corpus of a task (or reused from the cache). `r1kit zero` (the demo)
and the pipeline's `base` stage both build their base here.

The corpus is a mix of document kinds, and the base's behaviours come from that mix alone (every token of every
completion is trained):

- `worked_frac` of the solutions think step by step in <think> (the task's scratchpad), the rest give the answer at
  once after an empty thought. Bare answers are the gold, so the base learns to compute it "in its head": right on
  easy questions, often wrong on long ones. `slip_frac` of the worked solutions carry a slip (a step off by a
  little, so a wrong answer), as people's do.
- `check_frac` of the solutions state a value worked out in the head inside the thought, then "wait, " and check
  it with the scratchpad ("<think>40 wait, 3+2=5 5*4=20 20+1=21 21*2=42</think>"): half of those first values are
  wrong and the check fixes them, half are right and the check confirms them
  (tasks.synthetic.ArithTask.revised_solution).
  With `placebo` the checks never work anything out, so they never fix anything: "40 wait, 40", answer 40 (and
  the same for a right first value). It is the control for "reflection rises because it pays". A placebo whose
  check worked the chain but slipped at its last step back to the first value did not control: on bases that
  chain well, GRPO repaired the slip (docs/BENCHMARKS.md, "Session 10").
- `asked_frac` of the R1-Zero-template documents ask for the working ("Show your working. (3+2)*4") and get it as
  the answer, after an empty thought (`shown_solution`). The skill is then practised in that template too, not only
  in the chat one: without them a check in the R1-Zero template copied the wrong operators on two bases of three.
  The working goes in the answer, not the thought, so that in this template only a check links a thought's
  scratchpad to the answer (docs/BENCHMARKS.md, "Session 9" and "Session 10"). A plain question still gets the mix
  above.
- `chat_frac` of the documents are rendered with the R1 chat template (user question, then a thought and the bare
  answer), because a real base (DeepSeek-V3-Base) has seen chat-shaped text. `chat_worked_frac` of them think
  (default all); the rest have an empty thought, so a student base can know the chat template without ever
  seeing a scratchpad (bench/distill_vs_rl.py). Without them a tiny base cannot
  copy operands out of a chat prompt after a few hundred cold-start examples. The thought is the same scratchpad and
  the answer a bare number, so the readable pattern (a summary with a boxed answer) is still cold-start SFT's job.
- The BPE tokenizer is trained on the corpus plus the fixed strings later stages write (the R1 summary line, the
  built-in chats), so Han characters and `\\boxed` get tokens of their own rather than raw bytes.

MoE presets train their multi-token-prediction modules too (`mtp_weight`, DeepSeek-V3's lambda). With task
`arith-mix` the worked scratchpads mix English into Chinese, so the base mixes languages. The same builder with
`preset: tiny` (or tiny-qwen2) makes a dense student base from the same documents: the tokenizer is the same.
Bases are cached in `.cache/r1kit/base-<hash of the config>`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.errors import R1kitError
from r1kit.tasks.common import Example

CACHE = Path(".cache/r1kit")
ASK = "Show your working. "  # how an `asked_frac` document's question asks for the scratchpad
CORPUS_VERSION = 3  # in the cache key: raise it whenever corpus_texts writes other documents for the same config


@dataclass
class BaseStageConfig:
    task: str = "arith-mix"
    task_kw: dict = field(default_factory=dict)
    preset: str = "tiny-moe"  # any ModelConfig preset: tiny-moe (teacher), tiny / tiny-qwen2 (dense students)
    vocab_size: int = 512  # BPE trained on the corpus
    worked_frac: float = 0.2  # share of solutions that think step by step; the rest answer at once
    slip_frac: float = 0.0  # share of worked solutions with an uncaught slip (a wrong answer)
    check_frac: float = 0.0  # share of solutions whose head value is checked: "wait, " and the scratchpad
    placebo: bool = False  # checks that restate the first value ("40 wait, 40"): they never fix anything
    chat_frac: float = 0.3  # share of documents in the R1 chat template (a thought, then the bare answer)
    chat_worked_frac: float = 1.0  # share of chat documents whose thought is the scratchpad; the rest think nothing
    asked_frac: float = 0.0  # share of R1-Zero-template documents whose question asks for the working (ASK)
    steps: int = 2000  # 800 left tiny-moe under-trained: its GRPO was unstable (docs/PIPELINE.md)
    batch_size: int = 32
    lr: float = 3e-3
    mtp_weight: float = 0.3  # MTP loss weight for presets with MTP modules (DeepSeek-V3 uses 0.3, then 0.1)
    seed: int = 0
    cache: bool = True  # reuse an identical base from .cache/r1kit

    def __post_init__(self):
        from r1kit.model.config import PRESETS

        if self.preset not in PRESETS:  # checked with the recipe, not when the stage starts
            raise R1kitError(f"preset: unknown preset {self.preset!r} (presets: {', '.join(sorted(PRESETS))})")
        for name in ("worked_frac", "slip_frac", "check_frac", "chat_frac", "chat_worked_frac", "asked_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise R1kitError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.worked_frac + self.check_frac > 1:
            raise R1kitError("worked_frac + check_frac must be at most 1")


def tokenizer_texts(docs: list[tuple[str, str]]) -> list[str]:
    """What the BPE is trained on: the documents and the fixed strings the pipeline writes later."""
    from r1kit.pipeline.filters import SUMMARY
    from r1kit.tasks import CHAT_DATA

    fixed = [s.format(n) for s in SUMMARY.values() for n in range(30)] + [q + " " + a for q, a, _ in CHAT_DATA]
    return [p + c for p, c in docs] + fixed * 20


def corpus_texts(task, cfg: BaseStageConfig) -> list[tuple[str, str, str]]:
    """-> steps * batch_size documents (prompt text, completion text, kind), kind one of chat, asked, worked, slip,
    fix, confirm, placebo, placebo-confirm, bare."""
    from r1kit.tokenizer import render_r1

    rng = random.Random(cfg.seed)
    docs = []
    for _ in range(cfg.steps * cfg.batch_size):
        ex = task[rng.randrange(len(task))]
        if rng.random() < cfg.chat_frac:
            prompt = render_r1([{"role": "user", "content": ex.question}])  # ends in "<think>\n"
            # the extra draw only when some chat documents are bare, so corpora made before it are unchanged
            worked = cfg.chat_worked_frac >= 1 or rng.random() < cfg.chat_worked_frac
            docs.append((prompt, f"{ex.meta['scratchpad'] if worked else ''}\n</think>\n\n{ex.answer}", "chat"))
            continue
        if cfg.asked_frac and rng.random() < cfg.asked_frac:  # a draw only when asked, so older corpora are unchanged
            asked = Example(ASK + ex.question, ex.answer, ex.meta)
            docs.append((task.prompt(asked, template="r1-zero"), " " + task.shown_solution(asked), "asked"))
            continue
        # one draw picks the kind, so corpora without checks are those made before them
        u = rng.random()
        if u < cfg.worked_frac:
            kind = "slip" if rng.random() < cfg.slip_frac else "worked"
        elif u < cfg.worked_frac + cfg.check_frac:
            kind = "confirm" if rng.random() < 0.5 else "fix"
            kind = {"confirm": "placebo-confirm", "fix": "placebo"}[kind] if cfg.placebo else kind
        else:
            kind = "bare"
        completion = task.bare_solution(ex) if kind == "bare" else task.worked_solution(ex) if kind == "worked" \
            else task.revised_solution(ex, kind, rng)
        docs.append((task.prompt(ex, template="r1-zero"), " " + completion.lstrip(), kind))
    return docs


def build_corpus(task, cfg: BaseStageConfig, tok_factory) -> tuple[object, list, list[str]]:
    """-> (tokenizer, [(ids, loss_mask)], kinds): the loss is on every completion token."""
    docs = corpus_texts(task, cfg)
    tok = tok_factory(tokenizer_texts([(p, c) for p, c, _ in docs[:4000]]), cfg.vocab_size)
    examples = []
    for p, c, kind in docs:
        pi = tok.encode(p) if kind == "chat" else tok.encode(p, add_bos=True)
        ci = tok.encode(c) + [tok.eos_id]
        examples.append((pi + ci, [0] * len(pi) + [1] * len(ci)))
    return tok, examples, [k for _, _, k in docs]


def cache_folder(cfg: BaseStageConfig) -> Path:
    """Where the base of this config is cached: .cache/r1kit/base-<hash of the config>."""
    fields = dataclasses.asdict(cfg) | {"cache": None, "corpus": CORPUS_VERSION}
    return CACHE / f"base-{hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]}"


def build_base(cfg: BaseStageConfig, log=print):
    """Pretrain (or load the cached) base -> (model, tokenizer)."""
    from r1kit.checkpoint.hf import load_model, save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tasks import get_task
    from r1kit.sft import SFTConfig, train
    from r1kit.tokenizer import Tokenizer

    from r1kit.train import dist

    folder = cache_folder(cfg)
    cached = dist.on_main(lambda: cfg.cache and (folder / "config.json").exists() and
                          (folder / "tokenizer.json").exists())  # decided once: every rank takes the same path
    if cached:
        log(f"  reusing the cached base {folder}")
        return load_model(folder), Tokenizer.from_file(folder)
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task, "train", **cfg.task_kw)
    tok, examples, kinds = build_corpus(task, cfg, Tokenizer.train_bpe)  # the same on every rank (seeded)
    tok.template = "r1-zero"  # saved with the base: every command then prompts it the way it was trained
    mcfg = ModelConfig.from_name(cfg.preset).replace(vocab_size=tok.vocab_size, bos_id=tok.bos_id,
                                                     eos_id=tok.eos_id)
    model = Transformer(mcfg)
    mix = ", ".join(f"{k} {n / len(kinds):.1%}" for k, n in sorted(Counter(kinds).items(), key=lambda kv: -kv[1]))
    log(f"  pretraining {cfg.preset} ({model.num_params():,} parameters) on {len(examples):,} documents: {mix}")
    t0 = time.time()

    def show(step, st):
        if (step + 1) % 250 == 0:
            log(f"  pretrain step {step + 1}/{cfg.steps} loss {st['loss']:.3f}")

    train(model, examples, SFTConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=50,
                                     seed=cfg.seed, mtp_weight=cfg.mtp_weight), log=show)
    if cfg.cache:
        save_model(model, folder)  # every rank: a sharded model is gathered, rank 0 writes

        def write_rest():
            tok.save(folder)
            (folder / "corpus.json").write_text(json.dumps({"config": dataclasses.asdict(cfg),
                                                            "kinds": dict(Counter(kinds))}, indent=2))
        dist.on_main(write_rest)
    log(f"  base pretrained in {time.time() - t0:.0f}s")
    if dist.is_sharded(model) and cfg.cache:  # under torchrun: a plain model, read back from the cache
        return load_model(folder), tok
    return model, tok  # sharded without a cache: modelio.save gathers it


def run(cfg: BaseStageConfig, inputs: dict, out: Path, ctx):
    from r1kit.pipeline import modelio
    from r1kit.pipeline.runner import StageResult

    model, tok = build_base(cfg, ctx.log)
    modelio.save(model, tok, out / "model", template="r1-zero", preset=cfg.preset)
    return StageResult({"model": "model"}, {"params": model.num_params(), "vocab": tok.vocab_size,
                                            "preset": cfg.preset})
