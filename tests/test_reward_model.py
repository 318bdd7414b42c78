"""Bradley-Terry reward model (pipeline/reward_model.py) and the RL reward built around it (pipeline/rl.py)."""
import math

import pytest
import torch

from r1kit.model import ModelConfig, Transformer
from r1kit.pipeline.reward_model import (Pair, RewardModel, RewardModelConfig, RMScorer, batch_ids, bt_loss,
                                         pair_scores, synthetic_pairs, train_reward_model)
from r1kit.pipeline.rl import RLStageConfig, make_reward_fn
from r1kit.tasks import MixedArithTask, chat_examples
from r1kit.rl.grpo import GRPOConfig
from r1kit.tokenizer import Tokenizer

torch.set_num_threads(1)


def tiny_rm(seed: int = 0) -> tuple[RewardModel, Tokenizer]:
    torch.manual_seed(seed)
    tok = Tokenizer.builtin()
    cfg = ModelConfig.from_name("tiny").replace(bos_id=tok.bos_id, eos_id=tok.eos_id)
    return RewardModel(Transformer(cfg)), tok


# -- the loss ----------------------------------------------------------------------------------------------------

def test_bt_loss_hand_computed():
    loss, acc = bt_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262; -log sigmoid(-2) = log(1 + e^2) = 2.126928
    assert loss.item() == pytest.approx((0.313262 + 2.126928) / 2, abs=1e-6)
    assert acc.item() == 0.5


def test_bt_loss_equal_scores_is_log2_and_depends_on_the_difference_only():
    assert bt_loss(torch.zeros(3), torch.zeros(3))[0].item() == pytest.approx(math.log(2))
    a = bt_loss(torch.tensor([3.0]), torch.tensor([1.0]))[0]
    b = bt_loss(torch.tensor([12.0]), torch.tensor([10.0]))[0]
    assert a.item() == pytest.approx(b.item()) == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_bt_loss_gradient():
    c, r = torch.tensor([0.5], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    bt_loss(c, r)[0].backward()
    s = 1 / (1 + math.exp(-0.5))
    assert c.grad.item() == pytest.approx(-(1 - s)) and r.grad.item() == pytest.approx(1 - s)


# -- the model ---------------------------------------------------------------------------------------------------

def test_hidden_states_match_the_transformer():
    rm, _ = tiny_rm()
    ids = torch.randint(10, 100, (2, 9))
    logits = rm.backbone.lm_head(rm.hidden(ids))
    torch.testing.assert_close(logits, rm.backbone(ids))


def test_score_ignores_right_padding():
    rm, _ = tiny_rm()
    with torch.no_grad():
        rm.head.weight.normal_()
    a, b = [5, 17, 40, 41], [5, 18, 33, 60, 61, 70, 12]
    ids, lengths = batch_ids([a, b], pad_id=1)
    both = rm(ids, lengths)
    alone = rm(torch.tensor([a]), torch.tensor([len(a)]))
    torch.testing.assert_close(both[0], alone[0])


def test_training_learns_concise_over_verbose():
    rm, tok = tiny_rm()
    chats = [ex for ex in chat_examples() if ex.meta["lang"] == "en"]
    pairs = [Pair(ex.meta["messages"], ex.answer, ex.answer + " Let me say that again, to be thorough." * n)
             for ex in chats for n in (1, 2)]
    cfg = RewardModelConfig(steps=25, batch_size=8, lr=3e-3, warmup=3)
    losses = train_reward_model(rm, tok, pairs, cfg)
    assert losses[-1] < losses[0]
    c, r = pair_scores(rm, tok, pairs)
    assert (c > r).float().mean().item() == 1.0
    scores = RMScorer(rm, tok, 0.0, 1.0)([chats[0].meta["messages"]] * 2,
                                         [f"\n</think>\n\n{chats[0].answer}", "x</think> " + pairs[1].rejected])
    assert 0 < scores[1] < scores[0] < 1


def test_synthetic_pairs_cover_the_kinds():
    pairs = synthetic_pairs(MixedArithTask(size=50), 200, seed=0)
    assert {p.kind for p in pairs} == {"verbose", "wrong", "irrelevant"}
    assert all(p.chosen != p.rejected for p in pairs)


# -- the RL reward -----------------------------------------------------------------------------------------------

def test_reward_fn_dispatches_reasoning_and_general_and_rm_only_when_given():
    task = MixedArithTask(size=5)
    ex = task[0]
    chat = chat_examples()[0]  # "hello"
    good = ex.meta["scratchpad_clean"] + f"\n</think>\n\n答案是 $\\boxed{{{ex.answer}}}$。"
    mixed = "First" + ex.meta["scratchpad_clean"][2:] + f"\n</think>\n\n$\\boxed{{{ex.answer}}}$"
    reply = f"\n</think>\n\n{chat.answer}"
    cfg = RLStageConfig(template="r1", grpo=GRPOConfig(rewards={"accuracy": 1.0, "format_r1": 1.0, "language": 1.0}),
                        rm_weight=2.0)
    texts, golds, exs = [good, mixed, reply], [ex.answer, ex.answer, chat.answer], [ex, ex, chat]
    total, per = make_reward_fn(cfg)(texts, golds, examples=exs, lengths=[10, 10, 10])
    assert per["accuracy"] == [1.0, 1.0, None]  # the general prompt has no accuracy: left out of the logged mean
    assert per["language"][0] == 1.0 and per["language"][1] < 1.0
    assert total[0] == pytest.approx(3.0) and total[2] == pytest.approx(1.0)  # format only: empty thought
    fake_rm = lambda msgs, comps: [0.25] * len(comps)  # noqa: E731
    total_rm, per_rm = make_reward_fn(cfg, fake_rm)(texts, golds, examples=exs, lengths=[10, 10, 10])
    assert per_rm["reward_model"] == [None, None, 0.25]  # scored on the general prompt only
    assert total_rm[2] == pytest.approx(1.0 + 2.0 * 0.25) and total_rm[:2] == total[:2]
