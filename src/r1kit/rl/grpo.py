"""GRPO training step (r1-recipe.md section 1): rollouts from the engine, rule rewards, group advantages, mu updates.

The loss itself is the pure function in loss.py; this file gathers its inputs. Shapes: N = B*G completions,
T = padded prompt+completion length.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from r1kit import shared_prefix
from r1kit.rl.loss import group_advantages, grpo_loss, zero_std_groups


@dataclass
class GRPOConfig:
    steps: int = 100
    prompts_per_step: int = 16  # B questions per step
    group_size: int = 8  # G samples per question
    mu: int = 1  # inner updates per rollout batch (mu = 1: on-policy, ratio exactly 1)
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
    temperature: float = 1.0
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


def token_logp(model, ids: torch.Tensor, with_entropy: bool = False, start: int = 0):
    """log p(ids[:, t+1] | ids[:, :t+1]) -> [N, T-1] (and the per-token entropy [N, T-1] if asked). Positions
    t < start (the prompt, whose log-probs no loss reads) are 0 and cost no logits."""
    logits = shared_prefix.forward(model, ids[:, :-1], start=start).float()  # [N, T-1-start, V]; the prefix once
    logp_all = F.log_softmax(logits, dim=-1)
    logp = F.pad(logp_all.gather(-1, ids[:, start + 1:, None])[..., 0], (start, 0))
    if not with_entropy:
        return logp
    with torch.no_grad():
        entropy = F.pad(-(logp_all.exp() * logp_all).sum(-1), (start, 0))
    return logp, entropy


def rollout(engine, tok, examples, task, reward_fn, cfg: GRPOConfig, seed: int) -> Rollout:
    from r1kit.engine.sampling import SamplingParams

    G = cfg.group_size
    prompts = [tok.encode(task.prompt(ex, template="r1-zero"), add_bos=True) for ex in examples]
    # one seed per sample (the engine seeds group member j with seed + j), so groups never share noise
    params = [SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                             stop_token_ids=[tok.eos_id], seed=seed * 65_537 + i * G) for i in range(len(prompts))]
    results = engine.generate(prompts, params, n=G)  # prompt i's samples at i*G .. i*G+G-1
    seqs = [prompts[i // G] + list(r.token_ids) for i, r in enumerate(results)]
    texts = [tok.decode(r.token_ids, skip_special_tokens=True) for r in results]
    golds = [examples[i // G].answer for i in range(len(results))]
    lengths = torch.tensor([len(r.token_ids) for r in results])
    total, per_fn = reward_fn(texts, golds, lengths=lengths.tolist(), examples=[examples[i // G] for i in
                                                                                 range(len(results))])
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), tok.eos_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T - 1)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        p = len(prompts[i // G])
        mask[i, p - 1:len(s) - 1] = 1.0  # targets at positions p..len-1 are the completion
    truncated = torch.tensor([r.finish_reason == "length" for r in results])
    # a reward that does not apply to a sample (None, e.g. language on a thought with no words) is logged as NaN
    per_fn = {k: torch.tensor([float("nan") if x is None else x for x in v]) for k, v in per_fn.items()}
    return Rollout(ids, mask, torch.tensor(total, dtype=torch.float), per_fn, texts, lengths, truncated)


def grpo_step(policy, ref, engine, opt, tok, examples, task, reward_fn, cfg: GRPOConfig, step: int) -> dict:
    """One GRPO step: rollouts, advantages, mu optimiser updates. Returns the logged stats."""
    from r1kit.model.deepseek import update_moe_bias
    from r1kit.rewards import reflection_rate

    t0 = time.perf_counter()
    policy.eval()
    with torch.no_grad():
        ro = rollout(engine, tok, examples, task, reward_fn, cfg, seed=cfg.seed * 1_000_003 + step)
    t_gen = time.perf_counter() - t0
    G = cfg.group_size
    adv = group_advantages(ro.rewards, G, cfg.scale_rewards)  # [N]
    mask = ro.mask
    if cfg.mask_truncated:
        mask = mask * (~ro.truncated)[:, None]
    zero = zero_std_groups(ro.rewards, G)  # [B]
    keep = ~zero.repeat_interleave(G) if cfg.filter_zero_std else torch.ones(len(adv), dtype=torch.bool)
    ids, mask, adv = ro.ids[keep], mask[keep], adv[keep]
    stats = {}
    policy.train()
    if keep.any():
        start = int(mask.any(0).nonzero()[0]) if mask.any() else 0  # the first completion target: logits from here
        with torch.no_grad():
            ref_logp = token_logp(ref, ids, start=start) if cfg.beta else None
            old_logp = token_logp(policy, ids, start=start) if cfg.mu > 1 else None
        for _ in range(cfg.mu):
            logp, entropy = token_logp(policy, ids, with_entropy=True, start=start)
            old = old_logp if old_logp is not None else logp.detach()
            loss, st = grpo_loss(logp, old, ref_logp, adv, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                 beta=cfg.beta, agg=cfg.agg, max_len=cfg.max_new_tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            if cfg.moe_gamma and policy.cfg.moe:
                update_moe_bias(policy, cfg.moe_gamma)
        stats |= {"loss": loss.item(), "policy_loss": st.policy_loss.item(), "kl": st.kl.item(),
                  "clip_low": st.clip_low.item(), "clip_high": st.clip_high.item(), "grad_norm": grad_norm.item(),
                  "entropy": ((entropy * mask).sum() / mask.sum().clamp(min=1)).item()}
    policy.eval()
    dt = time.perf_counter() - t0
    n_tokens = int(ro.lengths.sum())
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
