"""GRPO loss against hand-computed values (docs/RECIPE.md sections 1 and 6)."""
import math

import pytest
import torch

from r1kit.rl.loss import (get_aggregation, group_advantages, grpo_loss, seq_mean_token_mean,
                           seq_mean_token_sum_norm, token_mean, zero_std_groups)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0, 0, 0, 2, 2, 2, 2])
    # group 1: mean 0.25, unbiased std sqrt(0.75 / 3) = 0.5 -> (0.75, -0.25, ...) / 0.5
    a = group_advantages(r, 4)
    assert torch.allclose(a[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert torch.equal(a[4:], torch.zeros(4))  # zero-std group: no signal, no NaN
    assert torch.allclose(group_advantages(r, 4, scale="none")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # batch std of all 8 rewards
    batch_std = r.std().item()
    assert torch.allclose(group_advantages(r, 4, scale="batch")[0], torch.tensor(0.75 / batch_std), atol=1e-5)
    assert zero_std_groups(r, 4).tolist() == [False, True]
    with pytest.raises(ValueError):
        group_advantages(r, 4, scale="max")


def _case():
    # two completions of two tokens; ratios (1.5, 1.0) with A=+1 and (0.5, 1.1) with A=-1
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.1]]))
    adv = torch.tensor([1.0, -1.0])
    return logp, old, adv, torch.ones(2, 2)


def test_clipping_both_sides():
    logp, old, adv, mask = _case()
    loss, st = grpo_loss(logp, old, None, adv, mask, eps_low=0.2, eps_high=0.28)
    # A>0: min(1.5, 1.28) = 1.28 and 1.0; A<0: min(-0.5, -0.8) = -0.8 and min(-1.1, -1.1) = -1.1
    # per-token loss = -surrogate: [-1.28, -1.0], [0.8, 1.1]; per-sequence means -1.14 and 0.95
    assert loss.item() == pytest.approx((-1.14 + 0.95) / 2, abs=1e-6)
    assert st.clip_high.item() == pytest.approx(0.25)
    assert st.clip_low.item() == pytest.approx(0.25)
    assert st.kl.item() == 0.0


def test_symmetric_eps_only_clips_outside_range():
    logp, old, adv, mask = _case()
    _, st = grpo_loss(logp, old, None, adv, mask, eps_low=0.6, eps_high=0.6)
    assert st.clip_low.item() == 0 and st.clip_high.item() == 0


def test_k3_kl_in_loss():
    logp, old, adv, mask = _case()
    ref = logp.clone()
    ref[0, 0] += math.log(2.0)  # ref - logp = ln 2 -> k3 = 2 - ln 2 - 1
    k3 = 2 - math.log(2) - 1
    loss, st = grpo_loss(logp, old, ref, adv, mask, eps_low=0.2, eps_high=0.28, beta=0.1)
    expected = ((-1.28 + 0.1 * k3 - 1.0) / 2 + 0.95) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert st.kl.item() == pytest.approx(k3 / 4, abs=1e-6)
    # the surrogate alone is reported apart from the KL
    assert st.policy_loss.item() == pytest.approx((-1.14 + 0.95) / 2, abs=1e-6)


def test_k3_is_nonnegative_and_zero_at_equality():
    logp = torch.randn(4, 5)
    ref = logp + torch.randn(4, 5)
    _, st = grpo_loss(logp, logp, ref, torch.zeros(4), torch.ones(4, 5), beta=1.0)
    assert st.kl.item() > 0
    _, st = grpo_loss(logp, logp, logp, torch.zeros(4), torch.ones(4, 5), beta=1.0)
    assert st.kl.item() == 0


def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2, 3], [4, 9, 9]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    assert seq_mean_token_mean(x, mask, 4).item() == pytest.approx((2 + 4) / 2)  # paper GRPO
    assert token_mean(x, mask, 4).item() == pytest.approx(10 / 4)  # DAPO
    assert seq_mean_token_sum_norm(x, mask, 4).item() == pytest.approx(10 / (2 * 4))  # Dr. GRPO
    assert get_aggregation("grpo") is seq_mean_token_mean
    assert get_aggregation("dapo") is token_mean
    assert get_aggregation("dr_grpo") is seq_mean_token_sum_norm
    with pytest.raises(ValueError):
        get_aggregation("sum")


def test_gradient_on_policy_equals_advantage_weighted_logp():
    # at ratio 1 (mu = 1) the surrogate's gradient is A * grad(logp) / |o| per token
    logp = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, torch.ones(2, 3))
    loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None].expand(2, 3) / 3 / 2, atol=1e-6)
