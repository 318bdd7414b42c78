"""rl/grpo.py: one GRPO step end to end on a tiny model, with a reward that does not apply to every sample."""
import copy
import dataclasses
import math

import pytest
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




# -- the memory-lean update equals the whole-batch one -----------------------------------------------------------

class CaptureGrads:
    """An optimiser stand-in that records each step's gradients and leaves the weights alone."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self.params])


def _batch(seed=0, B=2, G=3, P=20, max_c=9):
    """B groups of G rows sharing a prompt of P tokens, completions of varied lengths, right-padded."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, max_c + 1, (B * G,), generator=g)
    T = P + int(lens.max())
    ids = torch.zeros(B * G, T, dtype=torch.long)
    mask = torch.zeros(B * G, T - 1)
    for i in range(B * G):
        if i % G == 0:
            prompt = torch.randint(0, 120, (P,), generator=g)
        ids[i, :P] = prompt
        ids[i, P:P + lens[i]] = torch.randint(0, 120, (int(lens[i]),), generator=g)
        mask[i, P - 1:P - 1 + lens[i]] = 1
    adv = torch.randn(B * G, generator=g)
    return ids, mask, adv


def _models(name):
    from r1kit.rl.grpo import reference_logprobs  # noqa: F401
    torch.manual_seed(0)
    policy = Transformer(ModelConfig.from_name(name))
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))  # so the KL term has a gradient
    return policy, ref


def _update(policy, ref, cfg, batch):
    from r1kit.rl.grpo import grpo_update, reference_logprobs
    opt = CaptureGrads(policy.parameters())
    grpo_update(policy, opt, *batch, cfg, reference_logprobs(ref, cfg))
    return opt.grads


def _rel(a, b):
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b)) ** 0.5
    return float(num / sum((y ** 2).sum() for y in b) ** 0.5)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_and_checkpointing_give_the_whole_batch_gradient(name, agg):
    policy, ref = _models(name)
    batch = _batch()
    cfg = GRPOConfig(beta=0.04, agg=agg, max_new_tokens=9, grad_clip=0.0, micro_batch_tokens=0, moe_gamma=0)
    whole = _update(policy, ref, cfg, batch)[0]
    for ckpt in (False, True):
        policy.grad_checkpointing = ckpt
        micro = _update(policy, ref, dataclasses.replace(cfg, micro_batch_tokens=60), batch)[0]  # 1-2 rows each
        assert _rel(micro, whole) <= 1e-5, (ckpt, _rel(micro, whole))
    policy.grad_checkpointing = False
    assert any(g.abs().sum() > 0 for g in whole)


def test_checkpointing_counts_moe_load_once():
    from r1kit.model.deepseek import moe_layers
    policy, _ = _models("tiny-moe")
    ids = torch.randint(0, 120, (2, 12))
    loads = []
    for ckpt in (False, True):
        policy.grad_checkpointing = ckpt
        for m in moe_layers(policy):
            m.load = None
        policy.train()
        policy(ids, ids).backward()
        loads.append([m.load.clone() for m in moe_layers(policy) if m.load is not None])  # MTP runs no forward here
    assert loads[0] and all(torch.equal(a, b) for a, b in zip(*loads))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_one_mini_batch_one_epoch_is_the_plain_on_policy_step(temperature):
    """mini_batches = mu = 1 equals the step written the direct way: full logits / T, log-softmax, ratio 1."""
    import torch.nn.functional as F
    from r1kit.rl.loss import grpo_loss

    policy, ref = _models("tiny")
    ids, mask, adv = _batch(seed=1)
    cfg = GRPOConfig(beta=0.04, max_new_tokens=9, grad_clip=0.0, temperature=temperature, moe_gamma=0)
    got = _update(policy, ref, cfg, (ids, mask, adv))[0]

    def logp(model):
        lp = F.log_softmax(model(ids[:, :-1]).float() / temperature, -1)
        return lp.gather(-1, ids[:, 1:, None])[..., 0]

    policy.train()
    with torch.no_grad():
        ref_lp = logp(ref)
    lp = logp(policy)
    loss, _ = grpo_loss(lp, lp.detach(), ref_lp, adv, mask, beta=0.04, max_len=9)
    policy.zero_grad()
    loss.backward()
    want = [torch.zeros_like(p) if p.grad is None else p.grad for p in policy.parameters()]
    assert _rel(got, want) <= 1e-5


def test_mini_batches_read_old_log_probs_so_the_clip_acts():
    from r1kit.rl.grpo import grpo_update, reference_logprobs
    policy, ref = _models("tiny")
    cfg = GRPOConfig(beta=0.0, max_new_tokens=9, lr=0.05, mini_batches=2, eps_low=0.01, eps_high=0.01,
                     moe_gamma=0)
    opt = torch.optim.SGD(policy.parameters(), lr=cfg.lr)
    stats = grpo_update(policy, opt, *_batch(seed=2), cfg, reference_logprobs(ref, cfg))
    # the second optimiser step's ratios are against the rollout policy, which the first step moved
    assert stats["clip_low"] + stats["clip_high"] > 0
    on_policy = grpo_update(policy, opt, *_batch(seed=2), dataclasses.replace(cfg, mini_batches=1), None)
    assert on_policy["clip_low"] + on_policy["clip_high"] == 0


@pytest.mark.parametrize("ckpt", [False, True])
def test_sft_micro_batches_give_the_whole_batch_gradient(ckpt):
    """r1kit.sft: the mean loss over masked tokens, accumulated micro-batch by micro-batch, equals the whole
    batch's cross-entropy and its gradient."""
    import torch.nn.functional as F
    from r1kit.sft import accumulate_grads, batch_tensors

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-moe")).train()
    g = torch.Generator().manual_seed(3)
    batch = []
    for n in (9, 14, 6, 11):
        ids = torch.randint(0, 120, (n,), generator=g).tolist()
        batch.append((ids, [0] * 3 + [1] * (n - 3)))
    ids, mask = batch_tensors(batch)
    tgt = torch.where(mask.bool(), ids[:, 1:], -100)
    ref = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), tgt.flatten(), ignore_index=-100)
    ref.backward()
    want = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model.grad_checkpointing = ckpt
    loss = accumulate_grads(model, ids, mask, budget=24)  # 1-2 rows per micro-batch
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    assert abs(loss - ref.item()) < 1e-5
    assert _rel(got, want) <= 1e-5


def test_sft_trains_the_mtp_modules_exactly_in_micro_batches():
    """With mtp_weight the SFT loss adds the MTP modules' loss (DeepSeek-V3's lambda): micro-batched, with the
    shared-prefix forward, it equals the model's own `mtp_weight` loss and gradient, and reaches the MTP weights."""
    from r1kit.sft import accumulate_grads, batch_tensors

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-moe")).train()
    assert model.cfg.n_mtp
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, 120, (20,), generator=g).tolist()  # shared by every row: the prefix runs once
    batch = []
    for n in (9, 14, 6, 11):
        batch.append((prefix + torch.randint(0, 120, (n,), generator=g).tolist(), [0] * 20 + [1] * n))
    ids, mask = batch_tensors(batch)
    tgt = torch.where(mask.bool(), ids[:, 1:], -100)
    ref = model(ids[:, :-1], tgt, mtp_weight=0.3)
    ref.backward()
    want = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "mtp" in n)
    model.zero_grad(set_to_none=True)
    loss = accumulate_grads(model, ids, mask, budget=64, mtp_weight=0.3)
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    assert abs(loss - ref.item()) < 1e-5
    assert _rel(got, want) <= 1e-5


def test_sft_regroups_rows_that_share_a_prompt_exactly():
    """A pretraining batch mixes rows that open with one long prompt (the R1-Zero template) with rows that do not
    (chat documents): r1kit.sft regroups them so the shared prompt runs once, and the loss and gradient (MTP
    included) are still the whole batch's."""
    from r1kit.sft import accumulate_grads, batch_tensors
    from r1kit.train.batching import prefix_micro_batches

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-moe")).train()
    g = torch.Generator().manual_seed(5)
    prefix = torch.randint(0, 120, (24,), generator=g).tolist()
    batch = []
    for n, shared in ((9, True), (7, False), (14, True), (5, False), (11, True), (12, False)):
        head = prefix if shared else torch.randint(0, 120, (3,), generator=g).tolist()
        batch.append((head + torch.randint(0, 120, (n,), generator=g).tolist(), [0] * len(head) + [1] * n))
    ids, mask = batch_tensors(batch)
    lengths = [len(x) for x, _ in batch]
    parts = prefix_micro_batches(ids, lengths, budget=10_000)
    assert parts == [[0, 2, 4], [1, 3, 5]]  # the shared prompt's rows, then the rest, each in order
    tgt = torch.where(mask.bool(), ids[:, 1:], -100)
    ref = model(ids[:, :-1], tgt, mtp_weight=0.3)
    ref.backward()
    want = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = accumulate_grads(model, ids, mask, budget=10_000, mtp_weight=0.3)
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    assert abs(loss - ref.item()) < 1e-5
    assert _rel(got, want) <= 1e-5
