"""Supervised training on token sequences with a loss mask: pretraining the demo base, cold-start SFT, distillation.

An example is `(ids, loss_mask)`: the loss counts only where the mask is 1 (completion / assistant tokens). Batches
are right-padded to their longest example; the learning rate warms up linearly, then follows a cosine to
`min_lr_ratio * lr`. Memory: like the RL loop, a batch goes through in token-budget micro-batches whose losses are
each divided by the whole batch's token count (so the gradient is the whole-batch mean), the LM head runs in chunks
(train.logprobs) and blocks may be recomputed in the backward. A LoRA model (train.lora) trains its adapters only.
"""
from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

Example = tuple[list[int], list[int]]  # token ids, loss mask (same length)


@dataclass
class SFTConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    moe_gamma: float = 1e-3  # aux-loss-free bias speed for MoE models (0 disables)
    micro_batch_tokens: int = 8192  # padded tokens per forward/backward (0 = the whole batch at once)
    grad_checkpointing: str = "auto"  # on | off | auto
    mtp_weight: float = 0.0  # + this times the MTP modules' loss, for models that have them (DeepSeek-V3's lambda)


def cosine_lr(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def collate(batch: list[Example], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs (B, T-1) and targets (B, T-1) with -100 where the mask is 0 or padding."""
    T = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    tgt = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, (x, m) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        tgt[i, :len(x)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(x), -100)
    return ids[:, :-1], tgt[:, 1:]


def batch_tensors(batch: list[Example], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, T) right-padded and the target mask (B, T-1): 1 where ids[:, t+1] is a trained token."""
    T = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), T)
    for i, (x, m) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = torch.tensor(m, dtype=torch.float)
    return ids, mask[:, 1:]


def accumulate_grads(model, ids: torch.Tensor, mask: torch.Tensor, budget: int,
                     n_tokens: torch.Tensor | None = None, mtp_weight: float = 0.0) -> float:
    """Backward of the mean -log p over the batch's masked targets, micro-batch by micro-batch; returns the loss.
    n_tokens: the whole batch's target count when these rows are one rank's share of it. mtp_weight: adds that
    times the MTP modules' summed cross-entropy over (depths x the same count), so micro-batches stay exact."""
    from r1kit.model.deepseek import prenorm_states
    from r1kit.model.model import uncounted
    from r1kit.train import dist
    from r1kit.train.batching import prefix_micro_batches, row_lengths
    from r1kit.train.logprobs import sequence_logprobs
    from r1kit.train.precision import autocast

    n_tok = (mask.sum() if n_tokens is None else n_tokens).clamp(min=1)  # the whole batch's, fixed before the loop
    dev = model.lm_head.weight.device
    lengths = row_lengths(mask)
    mtp = bool(mtp_weight and getattr(model, "mtp", None))
    total = 0.0
    parts = prefix_micro_batches(ids, lengths.tolist(), budget)  # rows sharing a prompt run it once
    with dist.gathered(model):
        for i in range(dist.micro_batch_count(len(parts))):
            pad = i >= len(parts)  # this rank is out of rows: a pass that adds zero, for the collectives
            r = torch.tensor(parts[0] if pad else parts[i])
            T = int(lengths[r].max())
            x, m = ids[r, :T].to(dev), mask[r, :T - 1].to(dev)
            with autocast(model), (uncounted() if pad else nullcontext()), \
                    (prenorm_states(model) if mtp else nullcontext([])) as hs:
                logp, _ = sequence_logprobs(model, x, m)
                loss = -logp.sum()
                if mtp:
                    loss = loss + mtp_weight * _mtp_sum(model, hs, x, m) / len(model.mtp)
            loss = loss / n_tok.to(dev) * (0.0 if pad else 1.0)
            loss.backward()
            total += loss.item()
    return total


def _mtp_sum(model, hs: list, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed MTP cross-entropy over the targets `mask` (N, T-1) marks, from the pre-norm states of the forward."""
    from r1kit.model.deepseek import mtp_loss

    h = torch.cat([x.expand(ids.shape[0], -1, -1) for x in hs], dim=1)  # a shared prefix ran at batch 1
    x = ids[:, :-1]
    targets = torch.where(mask.bool(), ids[:, 1:], -100)
    return mtp_loss(model, h, x, targets, model.rope(torch.arange(x.shape[1], device=x.device), h.dtype), "sum")


def train(model, examples: list[Example], cfg: SFTConfig, log: Callable[[int, dict], None] | None = None,
          eval_examples: list[Example] | None = None) -> list[float]:
    """Train `model` in place for cfg.steps steps of batches drawn (seeded) from `examples`; returns the losses."""
    from r1kit.engine.cpu import large_blocks_to_the_kernel
    from r1kit.model.deepseek import update_moe_bias
    from r1kit.train.memory import big_pass, check, configure_checkpointing

    from r1kit.train import dist

    rng = random.Random(cfg.seed)
    core = getattr(model, "model", model)  # a wrapper (packing's DocumentMasked) holds the Transformer
    check(configure_checkpointing(core, cfg), next(model.parameters()).device.type)
    d = dist.setup()  # under torchrun: FSDP2 shards, each rank trains its share of every batch
    dist.shard(core)
    dist.check_batch(min(cfg.batch_size, len(examples)), "sft batch_size")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    model.train()
    losses = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg)
        batch = rng.sample(examples, min(cfg.batch_size, len(examples)))  # the same on every rank
        ids, mask = batch_tensors(batch)
        n_tok = mask.sum()
        if d.on:
            ids, mask = batch_tensors(dist.share(batch)[0])
        opt.zero_grad(set_to_none=True)
        with large_blocks_to_the_kernel() if big_pass(model, mask.numel()) else nullcontext():
            loss = accumulate_grads(model, ids, mask, cfg.micro_batch_tokens, n_tok, cfg.mtp_weight)
        loss = float(dist.all_sum(torch.tensor(loss, dtype=torch.float64)))
        dist.drop_unused_grads(model)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if cfg.moe_gamma and model.cfg.moe:
            update_moe_bias(model, cfg.moe_gamma)
        losses.append(loss)
        if log:
            stats = {"loss": losses[-1], "lr": opt.param_groups[0]["lr"]}
            if eval_examples and (step + 1) % max(1, cfg.steps // 5) == 0:
                stats["eval_loss"] = evaluate(model, eval_examples, cfg.batch_size)
            log(step, stats)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, examples: list[Example], batch_size: int = 32) -> float:
    """Mean loss over the masked tokens of `examples`."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        inputs, targets = collate(examples[i:i + batch_size])
        nll = model(inputs, targets, reduction="none")
        total += nll.sum().item()
        n += (targets != -100).sum().item()
    model.train(was_training)
    return total / max(n, 1)
