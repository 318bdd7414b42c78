"""train/logprobs.py: log-probs and entropy through the LM head in chunks equal the full computation."""
import pytest
import torch
import torch.nn.functional as F

from r1kit.model import ModelConfig, Transformer
from r1kit.train.logprobs import sequence_logprobs, token_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_with_grads(temperature):
    torch.manual_seed(0)
    M, D, V = 37, 16, 101
    h = torch.randn(M, D, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    tgt = torch.randint(0, V, (M,))
    g = torch.randn(M, dtype=torch.float64)
    lp, ent = token_logprobs(h, W, tgt, temperature, chunk=8)  # 5 chunks, the last one short
    (lp * g).sum().backward()
    gh, gW = h.grad.clone(), W.grad.clone()
    h.grad = W.grad = None
    logits = (h @ W.t()) / temperature
    full = F.log_softmax(logits, -1)
    ref_lp = full.gather(-1, tgt[:, None])[:, 0]
    ref_ent = -(full.exp() * full).sum(-1)
    (ref_lp * g).sum().backward()
    torch.testing.assert_close(lp.double(), ref_lp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gW, W.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_sequence_logprobs_equal_the_full_logits(name):
    """Masked positions only, shared prompt prefix run once, temperature applied: the same values as
    log_softmax(model(ids) / T) read at the targets, and zero where the mask is 0."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name)).eval()
    ids = torch.cat([torch.randint(0, 100, (1, 18)).expand(4, -1), torch.randint(0, 100, (4, 7))], dim=1)
    mask = torch.zeros(4, 24)
    mask[:, 17:] = 1
    mask[1, 21:] = 0  # a shorter completion
    T = 0.6
    lp, ent = sequence_logprobs(model, ids, mask, temperature=T)
    full = F.log_softmax(model(ids[:, :-1]).float() / T, -1)
    ref = full.gather(-1, ids[:, 1:, None])[..., 0] * mask
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1) * mask, rtol=0, atol=1e-4)
    at_one = sequence_logprobs(model, ids, mask, temperature=1.0)[0]
    assert (at_one - lp).abs().max() > 1e-3  # the temperature changes the values
