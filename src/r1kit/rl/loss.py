"""The GRPO objective as pure functions (docs/RECIPE.md sections 1 and 6).

Shapes: N = B*G sampled completions (B prompts x G samples), L = padded completion length.
    logp, old_logp, ref_logp : [N, L]  log-probs of the sampled tokens under pi_theta, pi_old, pi_ref
    mask                     : [N, L]  1 for completion tokens that count in the loss, 0 for padding
    adv                      : [N]     one outcome advantage per completion, shared by all its tokens
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class LossStats(NamedTuple):
    policy_loss: torch.Tensor  # the clipped surrogate term alone, aggregated like the loss
    kl: torch.Tensor  # mean k3 KL per token
    clip_low: torch.Tensor  # fraction of tokens whose ratio was clipped below (negative advantage)
    clip_high: torch.Tensor  # fraction clipped above (positive advantage)
    ratio_mean: torch.Tensor


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_group) / std (unbiased, as TRL and verl), outcome-only. rewards [N] -> [N].

    scale: "group" divides by the group's std (the paper), "batch" by the whole batch's std, "none" does not
    divide (Dr. GRPO). A group whose G rewards are equal gets A = 0 whatever the scale.
    """
    r = rewards.view(-1, group_size)  # [B, G]
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, not {scale!r}")
    return centred.flatten()


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] rewards -> [B] bool: True for groups whose rewards are all equal (they carry no signal)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(dim=1)


# -- loss aggregation: one function per mode (verl's names), plus the names TRL users know ---------------------

def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """The paper's GRPO: average each completion over its own tokens, then over completions."""
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
    return per_seq.mean()


def token_mean(x: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """DAPO's token-level loss: every token in the batch weighs the same, so long answers are not diluted."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def seq_mean_token_sum_norm(x: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Dr. GRPO: a constant normaliser (max completion length) removes the length bias of 1/|o_i|."""
    return (x * mask).sum() / (x.shape[0] * max_len)


AGGREGATIONS: dict[str, Callable] = {
    "seq-mean-token-mean": seq_mean_token_mean,
    "token-mean": token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}
ALIASES = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "bnpo": "token-mean",
           "dr_grpo": "seq-mean-token-sum-norm"}


def get_aggregation(name: str) -> Callable:
    key = ALIASES.get(name, name)
    if key not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {name!r}; known: {', '.join([*AGGREGATIONS, *ALIASES])}")
    return AGGREGATIONS[key]


def token_weights(mask: torch.Tensor, agg: str, max_len: int | None = None, n_rows: float | None = None,
                  n_tokens: float | None = None) -> torch.Tensor:
    """[N, L] weights w with sum(x * w) == aggregate(x, mask, max_len) for every x.

    Computed once over a whole (mini-)batch, they let any split of its rows into micro-batches add up to exactly
    the whole-batch loss and gradient: each normaliser (token count, sequence count and lengths, the Dr. GRPO
    constant) is a property of the whole batch, never of a micro-batch. When the batch is spread over ranks, pass
    its global row and token counts (n_rows, n_tokens); each rank's weights then sum to its share of the whole.
    """
    key = ALIASES.get(agg, agg)
    get_aggregation(key)
    mask = mask.float()
    N, L = mask.shape
    n_rows = N if n_rows is None else n_rows
    if key == "seq-mean-token-mean":
        return mask / (mask.sum(-1, keepdim=True).clamp(min=1) * n_rows)
    if key == "token-mean":
        return mask / (mask.sum() if n_tokens is None else torch.as_tensor(n_tokens)).clamp(min=1)
    return mask / (n_rows * (max_len or L))


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, adv: torch.Tensor,
              mask: torch.Tensor, *, eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
              agg: str = "seq-mean-token-mean", max_len: int | None = None, weights: torch.Tensor | None = None,
              n_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, LossStats]:
    """-J(theta): the clipped surrogate with separate eps_low/eps_high, minus beta * k3 KL, aggregated by `agg`.

    The KL sits in the loss, not in the reward (R1-v2 A.3). ref_logp may be None when beta == 0.
    For a micro-batch of a larger batch pass that batch's `weights` [N, L] (token_weights) and its token count
    `n_tokens`: the loss and every stat are then this micro-batch's share, and the shares add up to the batch's.
    """
    mask = mask.to(logp.dtype)
    max_len = max_len or logp.shape[1]
    if weights is None:
        weights = token_weights(mask, agg, max_len)
    weights = weights.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # [N, L]
    a = adv[:, None]  # [N, 1], the same for every token of a completion
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)  # [N, L]
    per_token = -surrogate
    if beta:
        d = ref_logp - logp
        k3 = torch.exp(d) - d - 1  # [N, L], >= 0, unbiased estimate of KL(pi_theta || pi_ref)
        per_token = per_token + beta * k3
    else:
        k3 = torch.zeros_like(logp)
    loss = (per_token * weights).sum()
    with torch.no_grad():
        n = mask.sum().clamp(min=1) if n_tokens is None else n_tokens
        stats = LossStats(
            policy_loss=(-surrogate * weights).sum(),
            kl=(k3 * mask).sum() / n,
            clip_low=(((ratio < 1 - eps_low) & (a < 0)) * mask).sum() / n,
            clip_high=(((ratio > 1 + eps_high) & (a > 0)) * mask).sum() / n,
            ratio_mean=(ratio * mask).sum() / n,
        )
    return loss, stats
