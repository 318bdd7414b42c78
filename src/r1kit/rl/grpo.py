"""GRPO training step: rollouts from the engine, rewards, group advantages, then mu epochs of mini-batch updates.

The loss itself is the pure function in loss.py; this file gathers its inputs and schedules the updates. Shapes:
N = B*G completions, T = padded prompt+completion length. Memory: the logits never exist as a whole
(train.logprobs), rows go through in token-budget micro-batches (train.batching), blocks may be recomputed in the
backward (model.grad_checkpointing), and the old-policy and reference passes keep no graph.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from r1kit.rl.loss import group_advantages, grpo_loss, zero_std_groups


@dataclass
class GRPOConfig:
    steps: int = 100
    prompts_per_step: int = 16  # B questions per step
    group_size: int = 8  # G samples per question
    mu: int = 1  # epochs: passes over each rollout batch (the paper's mu)
    mini_batches: int = 1  # optimiser steps per pass, each on 1/mini_batches of the rollouts (R1: 16)
    micro_batch_tokens: int = 8192  # padded tokens per forward/backward; gradients accumulate (0 = no split)
    grad_checkpointing: str = "auto"  # on | off | auto (on when the plan says activations would crowd memory)
    lr: float = 3e-6  # the paper's; tiny models need far more
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.001  # k3 KL coefficient, in the loss
    eps_low: float = 0.2
    eps_high: float = 0.2  # > eps_low is DAPO's clip-higher
    agg: str = "seq-mean-token-mean"  # or token-mean (DAPO), seq-mean-token-sum-norm (Dr. GRPO)
    scale_rewards: str = "group"  # group | batch | none
    filter_zero_std: bool = False  # drop groups whose rewards are all equal
    mask_truncated: bool = False  # DAPO overlong filtering: truncated completions out of the loss
    ref_refresh: int = 400  # replace pi_ref with the policy every N steps
    temperature: float = 1.0  # sampling, and the temperature of every log-prob the loss reads (TRL, verl)
    top_p: float = 1.0
    max_new_tokens: int = 64
    rewards: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0})
    moe_gamma: float = 1e-3  # aux-loss-free bias speed for MoE policies
    seed: int = 0


@dataclass
class Rollout:
    ids: torch.Tensor  # [N, T] prompt + completion, right-padded
    mask: torch.Tensor  # [N, T-1] 1 where targets ids[:, 1:] are completion tokens
    rewards: torch.Tensor  # [N] weighted total
    per_fn: dict  # reward name -> [N]
    texts: list  # N completion strings
    lengths: torch.Tensor  # [N] completion tokens
    truncated: torch.Tensor  # [N] bool: hit max_new_tokens


@torch.no_grad()
def batch_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float, budget: int) -> torch.Tensor:
    """Log-probs [N, T-1] of the masked targets without gradients, in micro-batches of `budget` tokens (the old
    policy's and the reference's)."""
    from r1kit.train.batching import row_lengths

    from r1kit.train import dist

    out = torch.zeros(mask.shape, dtype=torch.float32)
    lengths = row_lengths(mask)
    was = model.training
    model.eval()
    with dist.gathered(model):
        _no_grad_passes(model, ids, mask, temperature, budget, lengths, out)
    model.train(was)
    return out


def _no_grad_passes(model, ids, mask, temperature, budget, lengths, out):
    from r1kit.train.batching import micro_batches
    from r1kit.train.logprobs import sequence_logprobs
    from r1kit.train.precision import autocast

    for rows in micro_batches(lengths.tolist(), budget):
        r = torch.tensor(rows)
        T = int(lengths[r].max())
        dev = model.lm_head.weight.device
        with autocast(model):
            lp, _ = sequence_logprobs(model, ids[r, :T].to(dev), mask[r, :T - 1].to(dev), temperature)
        out[r, :T - 1] = lp.float().cpu()


def rollout(engine, tok, examples, task, reward_fn, cfg: GRPOConfig, seed: int, template: str = "r1-zero",
            first: int = 0) -> Rollout:
    """Sample G completions of each example and score them. `first` is the global index of examples[0] in the
    step (several ranks each roll out a slice): sample seeds follow the global index, so the samples do not depend
    on how many ranks share the step."""
    from r1kit.engine.sampling import SamplingParams
    from r1kit.tasks import prompt_ids

    G = cfg.group_size
    prompts = [prompt_ids(tok, task, ex, template) for ex in examples]
    # one seed per sample (the engine seeds group member j with seed + j), so groups never share noise
    params = [SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                             stop_token_ids=[tok.eos_id], seed=seed * 65_537 + (first + i) * G)
              for i in range(len(prompts))]
    results = engine.generate(prompts, params, n=G)  # prompt i's samples at i*G .. i*G+G-1
    seqs = [prompts[i // G] + list(r.token_ids) for i, r in enumerate(results)]
    texts = [tok.decode(r.token_ids, skip_special_tokens=True) for r in results]
    golds = [examples[i // G].answer for i in range(len(results))]
    lengths = torch.tensor([len(r.token_ids) for r in results])
    truncated = torch.tensor([r.finish_reason == "length" for r in results])
    total, per_fn = reward_fn(texts, golds, lengths=lengths.tolist(), truncated=truncated.tolist(),
                              examples=[examples[i // G] for i in range(len(results))])
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), tok.eos_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T - 1)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        p = len(prompts[i // G])
        mask[i, p - 1:len(s) - 1] = 1.0  # targets at positions p..len-1 are the completion
    # a reward that does not apply to a sample (None, e.g. language on a thought with no words) is logged as NaN
    per_fn = {k: torch.tensor([float("nan") if x is None else x for x in v]) for k, v in per_fn.items()}
    return Rollout(ids, mask, torch.tensor(total, dtype=torch.float), per_fn, texts, lengths, truncated)


def reference_logprobs(ref_model, cfg: GRPOConfig):
    """(ids, mask) -> the reference's log-probs at the sampling temperature, in no-grad micro-batches."""
    return lambda ids, mask: batch_logprobs(ref_model, ids, mask, cfg.temperature, 2 * cfg.micro_batch_tokens)


def grpo_update(policy, opt, ids: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig,
                ref_logprobs=None) -> dict:
    """See _update. When the pass's activations run to gigabytes, large freed blocks go straight back to the kernel
    meanwhile (engine.cpu; it costs ~8% in page faults, so small batches keep malloc's own reuse)."""
    from r1kit.engine.cpu import large_blocks_to_the_kernel
    from r1kit.train.memory import big_pass

    with large_blocks_to_the_kernel() if big_pass(policy, mask.numel()) else nullcontext():
        return _update(policy, opt, ids, mask, adv, cfg, ref_logprobs)


def _update(policy, opt, ids: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig,
            ref_logprobs=None) -> dict:
    """The optimisation half of a GRPO step on one rollout batch: mu epochs x mini_batches optimiser steps, each
    accumulated over token-budget micro-batches. ids [N, T], mask [N, T-1], adv [N]. `ref_logprobs(ids, mask)`
    gives the reference's log-probs (None when beta = 0).

    Every normaliser is computed over the whole mini-batch before its micro-batch loop (rl.loss.token_weights),
    so the update does not depend on micro_batch_tokens. With mu = mini_batches = 1 the ratio is exactly 1 and no
    old-policy pass runs; otherwise old log-probs come from the rollout policy, so the clip acts.
    """
    from r1kit.model.deepseek import update_moe_bias
    from r1kit.model.model import uncounted
    from r1kit.rl.loss import token_weights
    from r1kit.train import dist
    from r1kit.train.batching import micro_batches, row_lengths
    from r1kit.train.logprobs import sequence_logprobs
    from r1kit.train.precision import autocast

    N, dev, T_s = len(ids), policy.lm_head.weight.device, cfg.temperature
    no_grad_budget = 2 * cfg.micro_batch_tokens  # nothing kept for a backward: twice the rows fit
    ref_lp = ref_logprobs(ids, mask) if (cfg.beta and ref_logprobs is not None) else None
    old_lp = batch_logprobs(policy, ids, mask, T_s, no_grad_budget) if cfg.mu > 1 or cfg.mini_batches > 1 else None
    lengths = row_lengths(mask)
    n_mini = max(1, min(cfg.mini_batches, N))
    minis = [r.tolist() for r in torch.arange(N).tensor_split(n_mini)]
    sums: dict[str, float] = {}
    policy.train()
    for _ in range(cfg.mu):
        for mini in minis:
            m_mask = mask[mini]
            # the mini-batch's normalisers, summed over the ranks that share it
            n_rows = float(dist.all_sum(torch.tensor(float(len(mini)))))
            n_tok = dist.all_sum(m_mask.sum()).clamp(min=1)
            weights = token_weights(m_mask, cfg.agg, cfg.max_new_tokens, n_rows=n_rows, n_tokens=n_tok)
            st_sum = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "entropy": 0.0}
            opt.zero_grad(set_to_none=True)
            parts = micro_batches(lengths[mini].tolist(), cfg.micro_batch_tokens)
            with dist.gathered(policy):
                for i in range(dist.micro_batch_count(len(parts))):
                    pad = i >= len(parts)  # this rank is out of rows: a pass that adds zero, for the collectives
                    local = parts[0] if pad else parts[i]
                    r = torch.tensor([mini[j] for j in local])
                    lr_ = torch.tensor(local)
                    T = int(lengths[r].max())
                    mk = mask[r, :T - 1]
                    with autocast(policy), (uncounted() if pad else nullcontext()):
                        logp, ent = sequence_logprobs(policy, ids[r, :T].to(dev), mk.to(dev), T_s)
                    old = old_lp[r, :T - 1].to(dev) if old_lp is not None else logp.detach()
                    ref = ref_lp[r, :T - 1].to(dev) if ref_lp is not None else None
                    loss, st = grpo_loss(logp, old, ref, adv[r].to(dev), mk.to(dev), eps_low=cfg.eps_low,
                                         eps_high=cfg.eps_high, beta=cfg.beta, agg=cfg.agg,
                                         max_len=cfg.max_new_tokens, weights=weights[lr_, :T - 1].to(dev),
                                         n_tokens=n_tok.to(dev))
                    if pad:
                        (loss * 0).backward()
                        continue
                    loss.backward()
                    st_sum["loss"] += loss.item()
                    for k in ("policy_loss", "kl", "clip_low", "clip_high"):
                        st_sum[k] += getattr(st, k).item()
                    st_sum["entropy"] += ((ent * mk.to(dev)).sum() / n_tok.to(dev)).item()
            dist.drop_unused_grads(policy)
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                       cfg.grad_clip or float("inf"))
            opt.step()
            if cfg.moe_gamma and policy.cfg.moe:
                update_moe_bias(policy, cfg.moe_gamma)
            st_sum = {k: float(dist.all_sum(torch.tensor(v, dtype=torch.float64))) for k, v in st_sum.items()}
            st_sum["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            sums = st_sum  # the last optimiser step's figures, as before mini-batches
    policy.eval()
    return sums


def grpo_step(policy, ref, engine, opt, tok, examples, task, reward_fn, cfg: GRPOConfig, step: int,
              template: str = "r1-zero", first: int = 0) -> dict:
    """One GRPO step: rollouts, advantages, then grpo_update. Returns the logged stats. `ref` is the reference
    model, or a callable (ids, mask) -> log-probs (a LoRA policy with its adapters off), or None."""
    from r1kit.rewards import reflection_rate

    if isinstance(ref, torch.nn.Module):
        ref = reference_logprobs(ref, cfg)

    t0 = time.perf_counter()
    policy.eval()
    with torch.no_grad():
        ro = rollout(engine, tok, examples, task, reward_fn, cfg, seed=cfg.seed * 1_000_003 + step,
                     template=template, first=first)
    t_gen = time.perf_counter() - t0
    G = cfg.group_size
    everyone = _gathered(ro)  # the whole step's rollouts (this rank's when alone): logs and batch-wide scales
    adv = group_advantages(ro.rewards, G, cfg.scale_rewards)  # [N], groups are whole on a rank
    if cfg.scale_rewards == "batch" and everyone is not ro:
        adv = group_advantages(ro.rewards, G, "none") / (everyone.rewards.std() + 1e-6)
    mask = ro.mask
    if cfg.mask_truncated:
        mask = mask * (~ro.truncated)[:, None]
    zero = zero_std_groups(ro.rewards, G)  # [B]
    keep = ~zero.repeat_interleave(G) if cfg.filter_zero_std else torch.ones(len(adv), dtype=torch.bool)
    stats = {}
    if keep.any():
        stats |= grpo_update(policy, opt, ro.ids[keep], mask[keep], adv[keep], cfg, ref)
    dt = time.perf_counter() - t0
    n_tokens = int(ro.lengths.sum())
    zero = zero_std_groups(everyone.rewards, G)
    ro = everyone
    stats |= {
        "reward": ro.rewards.mean().item(), "reward_std": ro.rewards.std().item(),
        **{f"reward/{k}": v.nanmean().item() for k, v in ro.per_fn.items()},  # over the samples it applies to
        **{f"reward/{k}_std": v[~v.isnan()].std().item() for k, v in ro.per_fn.items()},
        "accuracy": ro.per_fn["accuracy"].nanmean().item() if "accuracy" in ro.per_fn else float("nan"),
        "length_mean": ro.lengths.float().mean().item(), "length_max": int(ro.lengths.max()),
        "truncated": ro.truncated.float().mean().item(), "frac_reward_zero_std": zero.float().mean().item(),
        "reflection_rate": sum(map(reflection_rate, ro.texts)) / len(ro.texts),
        "step_time": dt, "gen_time": t_gen, "train_time": dt - t_gen, "tokens_per_s": n_tokens / t_gen,
    }
    return stats


def _gathered(ro: Rollout):
    """The rollouts of every rank in rank order (just `ro` with one process): what the logs describe."""
    from r1kit.train import dist

    if not dist.current().on:
        return ro
    import torch.distributed as td
    parts = [None] * dist.current().world
    td.all_gather_object(parts, {"rewards": ro.rewards, "per_fn": ro.per_fn, "texts": ro.texts,
                                 "lengths": ro.lengths, "truncated": ro.truncated})
    cat = lambda k: torch.cat([p[k] for p in parts])  # noqa: E731
    return Rollout(None, None, cat("rewards"), {k: torch.cat([p["per_fn"][k] for p in parts]) for k in ro.per_fn},
                   [t for p in parts for t in p["texts"]], cat("lengths"), cat("truncated"))
