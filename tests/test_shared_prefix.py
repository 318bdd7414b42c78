import pytest
import torch

from r1kit import shared_prefix
from r1kit.model import ModelConfig, Transformer


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2", "tiny-moe"])
def test_logits_and_grads_equal_plain_forward(name):
    torch.set_num_threads(1)
    model = Transformer(ModelConfig.from_name(name))
    prefix = torch.randint(0, 128, (1, 20)).expand(3, -1)
    ids = torch.cat([prefix, torch.randint(0, 128, (3, 9))], dim=1)
    assert shared_prefix.common_prefix_len(ids) >= 20
    ref = model(ids)
    got = shared_prefix.forward(model, ids)
    assert (ref - got).abs().max().item() < 1e-5
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    g_got = torch.autograd.grad((shared_prefix.forward(model, ids) * w).sum(), [p for p in model.parameters() if p.requires_grad],
                                allow_unused=True)
    for a, b in zip(g_ref, g_got):
        if a is None:
            assert b is None
        else:
            assert (a - b).abs().max() <= 1e-5 * a.abs().max() + 1e-6  # summation order only


def test_no_shared_prefix_falls_back():
    model = Transformer(ModelConfig.from_name("tiny"))
    ids = torch.randint(0, 128, (2, 12))
    ids[1, 0] = (ids[0, 0] + 1) % 128
    assert shared_prefix.common_prefix_len(ids) == 0
    assert torch.equal(shared_prefix.forward(model, ids), model(ids))


@pytest.mark.parametrize("start", [0, 7, 20, 25])
def test_start_skips_the_logits_of_early_positions(start):
    """start < prefix, == prefix and inside the rows' own tokens: always model(ids)[:, start:]."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-moe"))
    ids = torch.cat([torch.randint(0, 128, (1, 20)).expand(3, -1), torch.randint(0, 128, (3, 9))], dim=1)
    got = shared_prefix.forward(model, ids, start=start)
    assert got.shape == (3, 29 - start, model.cfg.vocab_size)
    assert (model(ids)[:, start:] - got).abs().max().item() < 1e-5
