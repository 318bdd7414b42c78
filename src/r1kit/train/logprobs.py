"""Per-token log-probs and entropy from hidden states, through the LM head in chunks of rows.

The full logits tensor (N, T, V) is what runs RL trainers out of memory: 16 x 1,024 tokens x 49,152 ids in fp32 is
3.2 GB, and log-softmax and entropy each add another. Here the head is applied to `chunk` rows at a time and the
backward recomputes each chunk's logits from the saved hidden states, so at most (chunk, V) logits exist at once,
in the forward and in the backward (the idea of a fused linear cross-entropy).

    h    (M, D)   hidden states of the M positions that are scored (after the final norm)
    W    (V, D)   LM head weight
    tgt  (M,)     the token whose log-prob is wanted at each position
    ->   logp (M,), entropy (M,)   under softmax(h W^T / temperature); entropy carries no gradient
"""
from __future__ import annotations

import torch

LOGITS_BUDGET = 1 << 23  # elements of one chunk's logits (32 MiB in fp32)


def chunk_rows(vocab: int, budget: int = LOGITS_BUDGET) -> int:
    return max(16, budget // max(vocab, 1))


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # fp32 softmax for bf16/fp32 inputs, fp64 for fp64


def _chunk_stats(h, W, tgt, temperature):
    logits = (h @ W.t()).to(_acc(h)) / temperature  # (c, V)
    lse = torch.logsumexp(logits, dim=-1)  # (c,)
    logp = logits.gather(-1, tgt[:, None])[:, 0] - lse
    return logits, lse, logp


class _ChunkedLogp(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, h, W, tgt, temperature: float, chunk: int):
        M = h.shape[0]
        logp, ent, lse_all = (torch.empty(M, dtype=_acc(h), device=h.device) for _ in range(3))
        for s in range(0, M, chunk):
            logits, lse, lp = _chunk_stats(h[s:s + chunk], W, tgt[s:s + chunk], temperature)
            p = torch.softmax(logits, dim=-1)
            ent[s:s + chunk] = lse - (p * logits).sum(-1)  # H = log Z - E_p[logit]
            logp[s:s + chunk], lse_all[s:s + chunk] = lp, lse
        ctx.save_for_backward(h, W, tgt, lse_all)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_logp, g_ent):
        h, W, tgt, lse_all = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        acc = _acc(h)
        gW = torch.zeros(W.shape, dtype=acc, device=W.device) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], chunk):
            hc = h[s:s + chunk]
            logits = (hc @ W.t()).to(acc) / T
            # d logp_t / d logits = onehot(t) - softmax; scaled by the incoming grad and the 1/T of the logits
            d = torch.exp(logits - lse_all[s:s + chunk, None]).neg_()
            d.scatter_add_(-1, tgt[s:s + chunk, None], torch.ones_like(d[:, :1]))
            d.mul_((g_logp[s:s + chunk] / T)[:, None])
            d = d.to(h.dtype)
            if gh is not None:
                gh[s:s + chunk] = d @ W
            if gW is not None:
                gW.addmm_(d.t().to(acc), hc.to(acc))
        return gh, (gW.to(W.dtype) if gW is not None else None), None, None, None


def token_logprobs(h: torch.Tensor, W: torch.Tensor, tgt: torch.Tensor, temperature: float = 1.0,
                   chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(tgt | h) and the entropy at each of the M rows of h (see the module docstring)."""
    return _ChunkedLogp.apply(h, W, tgt, float(temperature), chunk or chunk_rows(W.shape[0]))


def sequence_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
                      chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(ids[:, t+1] | ids[:, :t+1]) at the positions where mask (N, T-1) is set -> logp, entropy (N, T-1),
    zero elsewhere. Only the scored positions go through the LM head; the batch's shared prompt prefix runs once."""
    from r1kit import shared_prefix

    mask = mask.bool()
    start = int(mask.any(0).nonzero()[0]) if mask.any() else mask.shape[1]  # prompt positions need no head
    start = min(start, ids.shape[1] - 2)
    from r1kit.train import dist

    # Under torchrun every rank must make the same FSDP calls (each backward reduce-scatters), and whether a rank's
    # rows share a prefix differs by rank: there, every forward is the plain one.
    min_prefix = ids.shape[1] if dist.current().on else shared_prefix.MIN_PREFIX
    h = shared_prefix.forward(model, ids[:, :-1], min_prefix=min_prefix, start=start, hidden=True)  # (N, T-1-start, D)
    sel = mask[:, start:]
    logp, ent = token_logprobs(h[sel], model.lm_head.weight, ids[:, start + 1:][sel], temperature, chunk)
    out_lp = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
    out_ent = torch.zeros(mask.shape, dtype=ent.dtype, device=ent.device)
    return out_lp.masked_scatter(mask, logp), out_ent.masked_scatter(mask, ent)
