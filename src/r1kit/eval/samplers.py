"""Samplers: the only way the eval harness reaches a model (docs/EVAL.md, "Samplers").

    sampler = EngineSampler.from_spec("ckpt/", template="r1", max_batch=8)     # in-process r1kit engine
    sampler = OpenAISampler("http://127.0.0.1:8000/v1", model="r1", concurrency=8)  # any OpenAI-compatible server
    outs = sampler.sample([SampleRequest(messages, seeds=[0, 1, 2, 3])], GenParams(0.6, 0.95, 32768))
    outs[0][j].text, outs[0][j].finish_reason

A prompt is either chat messages (rendered by the tokenizer with the "r1" template, which ends the prompt in
`<think>\\n`, or the model's own "model" template; an HTTP server applies its own template) or a raw string (the
R1-Zero prompt). `Completion.text` is what r1kit scores: the thought, then `</think>`, then the answer. A server that
separates the thought (`reasoning_content`, DeepSeek API / vLLM reasoning parsers; `reasoning` in newer vLLM) is
re-joined as `reasoning + "</think>" + content`, so the answer section is exactly `content`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from r1kit.errors import R1kitError
from r1kit.tokenizer import THINK_CLOSE

Prompt = list[dict] | str


@dataclass(frozen=True)
class GenParams:
    """Sampling settings of a run (R1 protocol defaults)."""
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768

    def __post_init__(self):
        if not self.temperature >= 0:
            raise R1kitError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise R1kitError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise R1kitError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")


@dataclass
class SampleRequest:
    """One prompt and the seeds of the completions wanted for it (one completion per seed)."""
    prompt: Prompt
    seeds: list[int]


@dataclass
class Completion:
    """One sampled completion. finish_reason: "stop", "length" or "error" (the request failed: `error` says why;
    the harness records it, scores 0 and retries it on the next run). Token counts are None where unknown."""
    text: str
    finish_reason: str
    prompt_tokens: int | None = None
    think_tokens: int | None = None
    answer_tokens: int | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


class Sampler(Protocol):
    def info(self) -> dict:
        """{"name": ..., "model": ..., ...}: written into every record and the report."""

    def sample(self, requests: list[SampleRequest], params: GenParams) -> list[list[Completion]]:
        """Completions for each request, one per seed, in seed order."""


def _split_counts(text: str, total: int) -> tuple[int, int]:
    """(think, answer) token counts from a total when only the text is split: proportional to characters."""
    if THINK_CLOSE not in text:
        return total, 0
    think, answer = text.rsplit(THINK_CLOSE, 1)
    n = len(think) + len(answer)
    t = round(total * len(think) / n) if n else 0
    return t, total - t


# ---------------------------------------------------------------------------------------------------------------------
# In-process engine


class EngineSampler:
    """The r1kit engine in this process. Prompts are rendered with `template` ("r1": R1 chat template with the
    `<think>\\n` prefill, rendered as text for tokenizers without the R1 tokens; "model": the tokenizer's own
    jinja template; raw strings, e.g. the R1-Zero prompt, are encoded as they are). max_new_tokens is capped by the
    model's context (prompt + completion <= max_seq_len).

    Args:
        model: a Transformer in eval mode; tokenizer: its r1kit Tokenizer.
        template: "r1", "model" or "r1-zero"; None = the checkpoint's own (tokenizer.template).
        max_batch: sequences decoded together (engine slots).
        model_id: a name for records (e.g. the checkpoint path).
    """

    def __init__(self, model, tokenizer, template: str | None = None, max_batch: int = 8, model_id: str = "model"):
        template = template or tokenizer.template  # None: the template the checkpoint was trained for
        if template not in ("r1", "model", "r1-zero"):
            raise R1kitError(f"unknown template {template!r}; expected r1, model or r1-zero")
        if max_batch < 1:
            raise R1kitError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.max_batch, self.model_id = template, max_batch, model_id
        self.engine = None
        self.weights: str | None = None  # checkpoint fingerprint (part of the resume key)
        self._think_id = tokenizer.token_to_id(THINK_CLOSE)

    @classmethod
    def from_spec(cls, spec: str, template: str | None = None, max_batch: int = 8, device=None) -> EngineSampler:
        """Load a checkpoint folder, a .gguf file or a preset with r1kit.engine.load.load_for_inference."""
        from r1kit.engine.load import load_for_inference

        model, tok = load_for_inference(spec, device=device)
        sampler = cls(model, tok, template, max_batch, model_id=spec)
        sampler.weights = weights_fingerprint(spec)
        return sampler

    def info(self) -> dict:
        cfg = self.model.cfg
        return {"name": "r1kit-engine", "model": self.model_id, "weights": self.weights,
                "template": self.template, "context": cfg.max_seq_len, "max_batch": self.max_batch}

    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            ids = tok.encode(prompt)
            if tok.add_bos and tok.bos_id is not None and ids[:1] != [tok.bos_id]:
                ids.insert(0, tok.bos_id)
            return ids
        template = "r1" if self.template == "r1-zero" else self.template
        return tok.encode_chat(prompt, template=template)

    def _engine(self, need: int):
        from r1kit.engine.engine import Engine

        ctx = self.model.cfg.max_seq_len
        need = min(need, ctx)
        if self.engine is None or self.engine.max_seq < need:
            self.engine = Engine(self.model, self.tokenizer, max_batch=self.max_batch, max_seq_len=need)
        return self.engine

    def sample(self, requests: list[SampleRequest], params: GenParams) -> list[list[Completion]]:
        from r1kit.engine.sampling import SamplingParams

        ids = [self.encode(r.prompt) for r in requests]
        ctx = self.model.cfg.max_seq_len
        for i, p in enumerate(ids):
            if len(p) >= ctx:
                raise R1kitError(f"prompt {i} has {len(p)} tokens: no room left in the model's context of {ctx}")
        longest = max((len(p) for p in ids), default=0)
        engine = self._engine(longest + params.max_new_tokens)
        handles: list[list[int]] = []  # request -> engine request ids, in seed order
        for p, r in zip(ids, requests):
            max_new = max(1, min(params.max_new_tokens, engine.max_seq - len(p)))
            rids: list[int] = []
            # The engine seeds member j of a group with seed + j: contiguous seeds share one prefill (fan-out).
            for start, n in _runs(r.seeds, self.max_batch):
                sp = SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                    max_new_tokens=max_new, seed=start)
                rids += engine.add_group(p, sp, n)
            handles.append(rids)
        while engine.has_work:
            engine.step()
        out = []
        for p, rids in zip(ids, handles):
            out.append([self._completion(engine.pop_result(i), len(p)) for i in rids])
        return out

    def _completion(self, res, prompt_len: int) -> Completion:
        toks = list(res.token_ids)
        text = res.text if res.text is not None else self.tokenizer.decode(toks)
        body = toks[:-1] if res.finish_reason == "stop" and toks and toks[-1] == self.tokenizer.eos_id else toks
        if self._think_id is not None and self._think_id in body:
            cut = len(body) - 1 - body[::-1].index(self._think_id)
            think, answer = cut, len(body) - cut - 1
        elif THINK_CLOSE in text:
            think = len(self.tokenizer.encode(text.rsplit(THINK_CLOSE, 1)[0]))
            answer = max(0, len(body) - think - 1)
        else:
            think, answer = len(body), 0
        return Completion(text, "length" if res.finish_reason == "length" else "stop", prompt_len, think, answer)


def weights_fingerprint(spec: str) -> str:
    """Names, sizes and mtimes of a checkpoint's files (a preset: its name): changes when the weights are rewritten,
    so resumed runs never mix samples of two different checkpoints saved at the same path."""
    path = Path(spec)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return f"preset:{spec}"
    meta = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(meta).encode()).hexdigest()[:16]


def _runs(seeds: list[int], cap: int) -> list[tuple[int, int]]:
    """Split seeds into (start, n) runs of consecutive values, each at most `cap` long."""
    runs: list[tuple[int, int]] = []
    for s in seeds:
        if runs and s == runs[-1][0] + runs[-1][1] and runs[-1][1] < cap:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((s, 1))
    return runs


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


class OpenAISampler:
    """Any OpenAI-compatible server: r1kit's own, vLLM, SGLang, DeepSeek's API. Chat prompts go to
    `{base_url}/chat/completions`, raw strings to `{base_url}/completions`; one request per seed (n=1, `seed` set)
    on a thread pool of `concurrency`. Retries 429/5xx/connection errors with backoff; a request that still fails
    becomes a Completion with finish_reason "error".

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1" (a trailing "/chat/completions" is removed).
        model: the model name the server expects.
        concurrency: requests in flight.
        api_key_env: environment variable holding the API key (sent as a Bearer token, never recorded).
        timeout_s: per-request timeout; max_retries: retries per request.
    """

    def __init__(self, base_url: str, model: str, concurrency: int = 8, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 3600.0, max_retries: int = 3, backoff_s: float = 1.0):
        if not base_url.startswith(("http://", "https://")):
            raise R1kitError(f"base_url must start with http:// or https://, got {base_url!r}")
        if concurrency < 1:
            raise R1kitError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/").removesuffix("/chat/completions").removesuffix("/completions")
        self.model, self.concurrency = model, concurrency
        self.api_key_env, self.timeout_s = api_key_env, timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s

    def info(self) -> dict:
        return {"name": "openai-http", "model": self.model, "base_url": self.base_url}

    def sample(self, requests: list[SampleRequest], params: GenParams) -> list[list[Completion]]:
        jobs = [(i, r.prompt, s) for i, r in enumerate(requests) for s in r.seeds]
        out: list[list[Completion]] = [[] for _ in requests]
        with ThreadPoolExecutor(min(self.concurrency, max(1, len(jobs)))) as ex:
            results = list(ex.map(lambda job: self._one(job[1], job[2], params), jobs))
        for (i, _, _), c in zip(jobs, results):
            out[i].append(c)
        return out

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def _one(self, prompt: Prompt, seed: int, params: GenParams) -> Completion:
        body = {"model": self.model, "temperature": params.temperature, "top_p": params.top_p,
                "max_tokens": params.max_new_tokens, "seed": seed, "n": 1}
        path = "/completions" if isinstance(prompt, str) else "/chat/completions"
        body["prompt" if isinstance(prompt, str) else "messages"] = prompt
        err = ""
        for attempt in range(self.max_retries + 1):
            try:
                return parse_response(self._post(path, body))
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", errors="replace") if e.fp else ""
                err = f"HTTP {e.code}: {detail}"
                if e.code not in (408, 409, 429) and e.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError,
                    IndexError, TypeError) as e:
                err = f"{type(e).__name__}: {e}"
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        return Completion("", "error", error=err)


def parse_response(data: dict) -> Completion:
    """An OpenAI chat-completions (or completions) response -> Completion, re-joining a separated thought.

    The thought counts as closed when `content` is non-empty, or is present and the model stopped on its own; a
    response cut by the length limit with an empty `content` is an unfinished thought (no answer section)."""
    choice = data["choices"][0]
    finish = choice.get("finish_reason") or "stop"
    finish = "length" if finish == "length" else "stop"
    usage = data.get("usage") or {}
    if "message" in choice:
        msg = choice["message"] or {}
        content = msg.get("content")
        reasoning = msg.get("reasoning_content")
        if reasoning is None:
            reasoning = msg.get("reasoning")
    else:
        content, reasoning = choice.get("text", ""), None
    total = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details") or {}
    if reasoning is not None:
        closed = bool(content) or (content is not None and finish == "stop")
        text = reasoning + (THINK_CLOSE + content if closed else "")
    else:
        text = content or ""
    think = answer = None
    if details.get("reasoning_tokens") is not None and total is not None:
        think = int(details["reasoning_tokens"])
        answer = int(total) - think
    elif total is not None:
        think, answer = _split_counts(text, int(total))  # an estimate (characters), documented in docs/EVAL.md
    return Completion(text, finish, usage.get("prompt_tokens"), think, answer,
                      extra={"reasoning_split": reasoning is not None})


__all__ = ["Completion", "EngineSampler", "GenParams", "OpenAISampler", "SampleRequest", "Sampler",
           "parse_response"]
