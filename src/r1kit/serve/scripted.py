"""A scripted stand-in for `Transformer`: the engine runs it like a real model, but what it writes is fixed.

Tiny random models almost never emit `</think>`, so the reasoning split, DeepThink switch and usage counts cannot be
tested against them. `ScriptedModel` has the interface the engine uses (`cfg`, `parameters()`, `eval()`,
`forward(ids, positions=, cache=, attn_mask=, last_only=)` -> logits (B, 1, V)) and returns logits that force one
token: its "weights" are a script.

How it sees the context: it writes each input token id into the engine's KV cache (one layer, one head, head_dim 1),
and reads the whole row back, so it knows every earlier token of the sequence, prompt included. Prefix-cache hits and
G-sample fan-out copy those rows like real K/V, so they are exercised for real too.

What it writes, given the context:
  - a chat prompt (the context holds `<｜Assistant｜>`): the text since the last `<｜User｜>` up to the reply's
    anchor (the last `<｜Assistant｜>`, or a later `<｜tool▁outputs▁end｜>`: the reply to tool results) goes through
    `script(user) -> (reasoning, answer)`; the reply continues whichever candidate the text already after the
    anchor (the template's prefill plus what was generated) is a prefix of:
        "<think>\\n" + reasoning + "\\n</think>\\n\\n" + answer + eos       (DeepThink: the R1 prefill "<think>\\n")
        "<think>\\n\\n</think>\\n\\n" + answer + eos                       (the thinking-off prefill)
        answer + eos                                                     (no prefill at all)
    A script that returns reasoning None plays a model that never thinks: answer + eos is its only candidate.
  - anything else (a raw /v1/completions prompt): the next letter of the alphabet after the last token's first
    character ("a" after anything that is not a lowercase letter), until max_tokens.
Logits are 0 at the chosen token and -1e4 elsewhere, so every temperature samples it.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn

from r1kit.model.config import ModelConfig
from tokenizers import AddedToken

from r1kit.serve.tools import OUTPUTS_END, TOOL_TOKENS
from r1kit.tokenizer import R1_ASSISTANT, R1_USER, THINK_CLOSE, THINK_OPEN, Tokenizer

Script = Callable[[str], tuple[str | None, str]]


def tool_tokenizer() -> Tokenizer:
    """The built-in character tokenizer plus R1's tool tokens (each one token, not special, as in R1's own
    tokenizer), so a scripted model can call tools."""
    tok = Tokenizer.builtin()
    tok.tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return tok


def default_script(user: str) -> tuple[str, str]:
    """(reasoning, answer) for a user message. "[endless]" in it makes the reasoning too long to ever close."""
    if "[endless]" in user:
        return "la " * 100_000, ""
    return (f"The user wrote {len(user)} characters. Let me think step by step.",
            f"Hello! You said: {user[-40:]}")


class ScriptedModel(nn.Module):
    """Args:
        tokenizer: the tokenizer the engine and server use (must know `<｜Assistant｜>` as one token).
        script: user text -> (reasoning, answer); `default_script` if None.
        max_seq_len: the context the engine may use.
    """

    def __init__(self, tokenizer: Tokenizer, script: Script | None = None, max_seq_len: int = 4096):
        super().__init__()
        self.tok, self.script = tokenizer, script or default_script
        vocab = tokenizer.vocab_size
        # one layer, one KV head of width 1: the cache row holds the token ids themselves
        self.cfg = ModelConfig(arch="llama", vocab_size=vocab, dim=1, n_layers=1, n_heads=1, n_kv_heads=1,
                               head_dim=1, inter_dim=1, max_seq_len=max_seq_len, eos_id=tokenizer.eos_id)
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # gives the engine a device and a dtype
        self.assistant_id = tokenizer.token_to_id(R1_ASSISTANT)
        self.user_id = tokenizer.token_to_id(R1_USER)
        self.outputs_end_id = tokenizer.token_to_id(OUTPUTS_END)  # None for tokenizers without R1's tool tokens
        self.eos_id = tokenizer.eos_id
        self._candidates: OrderedDict[str, list[list[int]]] = OrderedDict()  # user text -> token lists, LRU
        self._letter_ids = {c: tokenizer.token_to_id(c) for c in "abcdefghijklmnopqrstuvwxyz"}

    def forward(self, ids: torch.Tensor, targets=None, *, positions=None, cache=None, attn_mask=None,
                last_only: bool = False, **_) -> torch.Tensor:
        """ids (B, T) -> logits (B, 1, V) forcing the scripted next token of each row (last position only)."""
        B, T = ids.shape
        if cache is not None:
            x = ids.to(self.anchor.dtype)[:, None, :, None]  # (B, 1, T, 1): the id is the key
            keys, _ = cache.update(0, x, x)  # (B, 1, length, 1): this row's ids up to the read length
            rows = keys[:, 0, :, 0].long().tolist()
            ends = (positions[:, -1] + 1).tolist()  # each row's own length (the rest is other rows' junk)
            contexts = [row[:end] for row, end in zip(rows, ends)]
        else:
            contexts = ids.tolist()
        logits = torch.full((B, 1, self.cfg.vocab_size), -1e4, dtype=self.anchor.dtype, device=ids.device)
        for b, ctx in enumerate(contexts):
            logits[b, 0, self.next_token(ctx)] = 0.0
        return logits

    def next_token(self, ctx: list[int]) -> int:
        anchors = [i for i, t in enumerate(ctx) if t in (self.assistant_id, self.outputs_end_id) and t is not None]
        if anchors:
            a = anchors[-1]
            before = ctx[:a]
            u = len(before) - 1 - before[::-1].index(self.user_id) if self.user_id in before else -1
            user = self.tok.decode(ctx[u + 1:a], skip_special_tokens=True)
            written = ctx[a + 1:]
            for cand in self._scripted(user):
                if cand[:len(written)] == written:
                    return cand[len(written)] if len(cand) > len(written) else self.eos_id
            return self.eos_id
        last = self.tok.decode(ctx[-1:], skip_special_tokens=True)[:1]
        nxt = chr(ord(last) + 1) if "a" <= last < "z" else "a"
        return self._letter_ids[nxt]

    def _scripted(self, user: str) -> list[list[int]]:
        if user in self._candidates:
            self._candidates.move_to_end(user)
            return self._candidates[user]
        reasoning, answer = self.script(user)
        texts = [answer] if reasoning is None else [
            f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}", f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n{answer}", answer]
        cands = [self.tok.encode(t) + [self.eos_id] for t in texts]
        self._candidates[user] = cands
        if len(self._candidates) > 256:
            self._candidates.popitem(last=False)
        return cands
