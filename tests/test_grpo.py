"""rl/grpo.py: one GRPO step end to end on a tiny model, with a reward that does not apply to every sample."""
import copy
import math

import torch

from r1kit.engine.engine import Engine
from r1kit.model import ModelConfig, Transformer
from r1kit.rewards.rules import combine
from r1kit.rl.grpo import GRPOConfig, grpo_step
from r1kit.tasks import get_task
from r1kit.tokenizer import Tokenizer


def test_grpo_step_logs_rewards_that_skip_samples():
    """`language` returns None for a thought with no words (R1-v2 Eq. 7 has nothing to score); that sample's total
    gets 0 from it and the logged mean is over the samples it scored, where tensors of None used to raise."""
    torch.manual_seed(0)
    tok = Tokenizer.builtin()
    cfg = ModelConfig.from_name("tiny")
    policy = Transformer(cfg)
    ref = copy.deepcopy(policy).eval()
    task = get_task("arith", split="train")
    gc = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, lr=1e-3, max_new_tokens=8)
    base = combine({"accuracy": 1.0, "format": 1.0})

    def reward_fn(texts, golds, **ctx):
        total, per_fn = base(texts, golds, **ctx)
        per_fn["language"] = [None if i % 2 else 1.0 for i in range(len(texts))]
        return [t + (0.0 if i % 2 else 1.0) for i, t in enumerate(total)], per_fn

    engine = Engine(policy, tok, max_batch=8)
    opt = torch.optim.AdamW(policy.parameters(), lr=gc.lr)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = grpo_step(policy, ref, engine, opt, tok, [task[0], task[1]], task, reward_fn, gc, step=0)
    assert stats["reward/language"] == 1.0 and math.isfinite(stats["reward"])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # the step trained


def test_token_logp_from_a_start_position_is_exact():
    """GRPO asks for log-probs from the first completion target on; earlier positions come back as 0."""
    from r1kit.rl.grpo import token_logp

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny"))
    ids = torch.cat([torch.randint(0, 100, (1, 18)).expand(4, -1), torch.randint(0, 100, (4, 6))], dim=1)
    full, full_ent = token_logp(model, ids, with_entropy=True)
    part, part_ent = token_logp(model, ids, with_entropy=True, start=20)
    assert part.shape == full.shape == (4, 23)
    torch.testing.assert_close(part[:, 20:], full[:, 20:], atol=1e-5, rtol=0)
    torch.testing.assert_close(part_ent[:, 20:], full_ent[:, 20:], atol=1e-5, rtol=0)
    assert not part[:, :20].any() and full[:, :20].any()
