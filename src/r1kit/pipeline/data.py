"""Chat data for SFT: jsonl IO (versioned files with stats), assistant-only loss masks, and packing.

A chat is `{"messages": [{"role": ..., "content": ...}, ...]}`. An assistant turn's content follows DeepSeek's
released data: `<think>\\nreasoning\\n</think>\\n\\nsummary`, or just the summary for an answer without thinking.
Training sees one example per assistant turn: the R1-rendered conversation up to that turn (mask 0; it ends in the
template's `<think>\\n` prefill) and the turn itself plus eos (mask 1), prompt and completion encoded separately
exactly as at inference. Earlier assistant turns appear as the template renders history (answer only).

`pack` concatenates examples into rows of at most `pack_len` tokens so a batch carries almost no padding; each
packed example still starts with bos and its loss mask is unchanged (the boundary token is never a target).
`DocumentMasked(model)` is what makes packing exact: wrapped around the model that r1kit.sft.train trains, its
forward finds the documents of each row by their bos tokens and gives each its own positions (from 0) and a
block-diagonal causal mask, so a packed row computes exactly what its documents would alone. (Naive packing lets a
document attend to the previous ones; on the tiny arithmetic task the model then copies numbers from the wrong
question: pass@1 0.25 instead of 0.68 after the same cold-start SFT.)
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import torch
import torch.nn as nn

from r1kit.errors import R1kitError
from r1kit.sft import Example
from r1kit.tokenizer import THINK_CLOSE, THINK_OPEN

SCHEMA = "r1kit.chat/1"


def read_chat_jsonl(path: str | Path) -> list[list[dict]]:
    """The `messages` lists of a chat jsonl (blank lines skipped)."""
    from r1kit.tasks import resolve_data_path

    path = resolve_data_path(path)
    chats = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            msgs = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise R1kitError(f"{path}:{i}: expected a JSON object with a `messages` list ({e})") from None
        if not isinstance(msgs, list) or not any(m.get("role") == "assistant" for m in msgs):
            raise R1kitError(f"{path}:{i}: `messages` needs at least one assistant turn")
        chats.append(msgs)
    return chats


def write_versioned(folder: Path, name: str, rows: list[dict], stats: dict) -> Path:
    """Write `rows` to `folder/name-vN.jsonl` and its stats to `name-vN.stats.json`; N is one more than the
    highest version already there, unless the newest version holds the same content (then it is reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    digest = hashlib.sha256(text.encode()).hexdigest()
    versions = sorted(int(m[1]) for p in folder.glob(f"{name}-v*.jsonl")
                      if (m := re.fullmatch(rf"{re.escape(name)}-v(\d+)\.jsonl", p.name)))
    if versions:
        last = folder / f"{name}-v{versions[-1]}.jsonl"
        if hashlib.sha256(last.read_bytes()).hexdigest() == digest:
            return last
    v = (versions[-1] + 1) if versions else 1
    path = folder / f"{name}-v{v}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    meta = {"schema": SCHEMA, "version": v, "file": path.name, "rows": len(rows), "sha256": digest} | stats
    path.with_suffix(".stats.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------------------------------------------
# encoding

def assistant_completion(content: str) -> str:
    """The text a model generates after the R1 prompt's `<think>\\n` prefill, for an assistant turn's content."""
    text = content
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
        return text[1:] if text.startswith("\n") else text
    if THINK_CLOSE not in text:  # an answer without thinking: an empty thought, as R1 answers "hello"
        return "\n" + THINK_CLOSE + "\n\n" + text
    return text


def r1_message(reasoning: str, summary: str) -> str:
    """An assistant turn in R1's readable output pattern: the reasoning inside think tags, then the summary."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{summary.strip()}"


def encode_chat(tok, messages: list[dict], max_len: int | None = None) -> list[Example]:
    """One (ids, loss mask) example per assistant turn; examples longer than max_len are dropped."""
    out = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or i == 0:
            continue
        prompt = tok.encode_chat(messages[:i], template="r1")
        completion = tok.encode(assistant_completion(m["content"])) + [tok.eos_id]
        if max_len is None or len(prompt) + len(completion) <= max_len:
            out.append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    return out


def pack(examples: list[Example], pack_len: int, seed: int = 0) -> list[Example]:
    """Shuffle (seeded), then fill rows of up to pack_len tokens in order; an example longer than pack_len gets a
    row of its own. Masks are concatenated unchanged."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    rows: list[Example] = []
    ids: list[int] = []
    mask: list[int] = []
    for x, m in order:
        if ids and len(ids) + len(x) > pack_len:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + list(x), mask + list(m)
    if ids:
        rows.append((ids, mask))
    return rows


def padding_fraction(rows: list[Example], batch_size: int) -> float:
    """Share of padded positions if `rows` were batched in order (a quick check of what packing saves)."""
    pad = total = 0
    for i in range(0, len(rows), batch_size):
        lens = [len(x) for x, _ in rows[i:i + batch_size]]
        total += max(lens) * len(lens)
        pad += max(lens) * len(lens) - sum(lens)
    return pad / max(total, 1)


class DocumentMasked(nn.Module):
    """Wraps a Transformer so that a packed row (documents each starting with `bos_id`) is computed as separate
    documents: positions restart at every bos and attention stays inside the document. Parameters, `cfg` and
    MoE layers are the wrapped model's, so r1kit.sft.train (optimiser, MoE balancing, eval loss) works unchanged."""

    def __init__(self, model, bos_id: int):
        super().__init__()
        self.model, self.bos_id = model, bos_id
        self.cfg = model.cfg

    @property
    def lm_head(self):  # chunked log-probs apply the wrapped model's head to the hidden states
        return self.model.lm_head

    def forward(self, ids: torch.Tensor, targets=None, **kw):
        if kw.get("cache") is not None or kw.get("attn_mask") is not None or kw.get("positions") is not None:
            return self.model(ids, targets, **kw)  # a caller that brings its own positions/mask keeps them
        B, T = ids.shape
        doc = torch.cumsum((ids == self.bos_id).long(), dim=1)  # (B, T) document index of each token
        idx = torch.arange(T, device=ids.device).expand(B, T)
        starts = torch.where(ids == self.bos_id, idx, torch.zeros_like(idx))
        start = torch.cummax(starts, dim=1).values  # (B, T) position of each token's document start
        positions = idx - start
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
        mask = (doc[:, :, None] == doc[:, None, :]) & causal  # (B, T, T): same document and not in the future
        return self.model(ids, targets, positions=positions, attn_mask=mask[:, None], **kw)
