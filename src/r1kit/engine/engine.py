"""The inference engine: continuous batching over a preallocated slot cache, prefix caching, G-sample fan-out.

    engine = Engine(model, tokenizer, max_batch=16)
    results = engine.generate([prompt_ids], SamplingParams(temperature=1.0, seed=0), n=8)  # one GRPO group
    rid = engine.add_request(prompt_ids, params)        # or drive it yourself (the server does, from a thread):
    for request_id, token, finished in engine.step(): ...
    engine.abort(rid)

Every request occupies one slot (a row of the cache) from admission to its last token, and keeps its own position,
so requests of any length join and leave between decode steps. `step()` first admits waiting requests into free
slots: prefix-cache lookup, chunked prefill at batch 1 from the first uncached token, then for a group of n samples
the prompt's cache row is copied to the other n-1 slots (prefill once, fan out; nanochat `Engine.generate_batch`).
Then it runs one decode forward over the slot rows with per-row positions (B, 1) and a per-row additive mask
(B, 1, 1, L) over the cache (none when every row has one length, as in a fanned-out group), samples every row with
its own parameters and random stream, and reports one event per new token.

Host syncs: one per step (the sampled tokens and log-probs come back together to check stop rules and stream);
the decode inputs (last tokens, positions) stay on the device between steps.
"""
from __future__ import annotations

import itertools
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from r1kit.engine import cpu
from r1kit.engine.cache import PrefixCache, make_slot_cache
from r1kit.engine.sampling import SamplingParams, sample, uniforms
from r1kit.errors import R1kitError


@dataclass
class Result:
    """One finished sample. `logprobs[i]` is log p(token_ids[i]) under the model's raw logits (temperature 1, no
    filtering): the policy log-prob GRPO needs. `sample_logprobs[i]` is under the sampling distribution (0 when
    greedy). finish_reason: "stop" (a stop id, eos or stop string; the stopping token is kept), "length"
    (max_new_tokens or the cache is full) or "abort"."""
    request_id: int
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    sample_logprobs: list[float]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused (prefix-cache hits and fan-out copies)
    text: str | None = None  # decoded completion, cut before a matched stop string (engines with a tokenizer)

    @property
    def prompt_cache_hit_tokens(self) -> int:
        return self.cached_tokens

    @property
    def prompt_cache_miss_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


class Event(NamedTuple):
    request_id: int
    token: int
    finished: bool


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    seed: int  # of the request's random stream (sampling.uniforms); unused when greedy
    stop_ids: frozenset[int]
    slot: int = -1
    cached: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)


class Engine:
    """Batched generation for one model. Not thread-safe: call add_request/step/abort from one thread.

    Args:
        model: a `Transformer` (dense or DeepSeek-V3/MLA), in eval mode, on its device and dtype.
        tokenizer: anything with `decode(ids) -> str` (and `eos_id`); needed for stop strings and `Result.text`.
        max_batch: slots, i.e. sequences decoded together (the cache's batch dimension).
        max_seq_len: positions per slot (prompt + completion); default min(model context, 4096).
        prefix_cache_bytes: cap of the prefix cache (0 = off); block_size: its granularity in tokens.
        prefill_chunk: prompt tokens per prefill forward (bounds activation memory for long prompts).
        compile: compile the decode step with static shapes (all max_batch rows, all max_seq_len positions);
            "reduce-overhead" (CUDA graphs) on CUDA, the default inductor mode on CPU (slower there: SmolLM2 decoded
            ~4x slower after a 3-minute compile, as every step attends over all max_seq_len positions). Eager is the
            default.
        pack_cpu_weights: during steps, run Linear layers on prepacked weight copies and, where r1kit's CPU
            kernels build, norms, SwiGLU and decode attention on them (cpu.py); None = on for CPU fp32 models unless
            compiled.
    """

    def __init__(self, model, tokenizer=None, *, max_batch: int = 16, max_seq_len: int | None = None,
                 prefix_cache_bytes: int = 1 << 30, block_size: int = 64, prefill_chunk: int = 1024,
                 compile: bool = False, pack_cpu_weights: bool | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        cfg = model.cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.max_batch, self.max_seq = max_batch, min(max_seq_len or 4096, cfg.max_seq_len)
        self.cache = make_slot_cache(cfg, max_batch, self.max_seq, self.dtype, self.device)
        self.prefix = PrefixCache(block_size, prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._prefix_weights = self._weights_version()  # the weights the prefix cache's KV was computed with
        self.prefill_chunk = prefill_chunk
        eos = getattr(tokenizer, "eos_id", None)
        self.eos_id = eos if eos is not None else cfg.eos_id
        self.slots: list[_Request | None] = [None] * max_batch
        self.waiting: deque[list[_Request]] = deque()  # groups admitted together (they share one prefill)
        self.requests: dict[int, _Request] = {}  # queued or running
        self.results: dict[int, Result] = {}  # finished, until taken with pop_result
        self._ids = itertools.count()
        dev = dict(device=self.device)
        # per-slot decode state and sampling parameters, kept on the device so a decode step uploads nothing
        self.tok = torch.zeros(max_batch, dtype=torch.long, **dev)  # last token of each slot (next input)
        self.pos = torch.zeros(max_batch, dtype=torch.long, **dev)  # position that token is written at
        self.live = torch.zeros(max_batch, dtype=torch.long, **dev)  # 1 for occupied slots; free rows stay at 0
        self.temp = torch.zeros(max_batch, **dev)
        self.top_p = torch.ones(max_batch, **dev)
        self.min_p = torch.zeros(max_batch, **dev)
        self.top_k = torch.zeros(max_batch, dtype=torch.long, **dev)
        self.seed = torch.zeros(max_batch, dtype=torch.long, **dev)
        self.positions = torch.arange(self.max_seq, **dev)
        cpu_fp32 = self.device.type == "cpu" and self.dtype == torch.float32
        if pack_cpu_weights is None:
            pack_cpu_weights = cpu_fp32 and not compile and cpu.available()
        elif pack_cpu_weights and not cpu_fp32:
            raise R1kitError(f"pack_cpu_weights needs a CPU fp32 model, not {self.device.type} {self.dtype}")
        self.packed = cpu.Patches(model, max_batch) if pack_cpu_weights else None
        self.cache.per_row_kernel = bool(pack_cpu_weights and not cfg.mla and cpu.attention_fits(cfg.head_dim))
        if self.device.type == "cpu":
            cpu.keep_freed_memory()
        self._decode = self._decode_forward
        self.compiled = compile
        if compile:
            for s in (t for stream in self.cache.streams for t in stream):  # updated in place: a fixed address
                torch._dynamo.mark_static_address(s)
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._decode = torch.compile(self._decode_forward, mode=mode, dynamic=False)
        self._graph_tls = _cudagraph_tls() if compile and self.device.type == "cuda" else {}

    # ------------------------------------------------------------------------------------------------------------
    # requests

    def load(self) -> tuple[int, int]:
        """(running, waiting): samples in slots now, and samples queued for a slot (what a server reports)."""
        return sum(s is not None for s in self.slots), sum(len(g) for g in self.waiting)

    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None) -> int:
        """Queue one sample of a prompt; returns its request id."""
        return self.add_group(prompt_ids, params, 1)[0]

    def add_group(self, prompt_ids: list[int], params: SamplingParams | None = None, n: int = 1) -> list[int]:
        """Queue n samples of one prompt (a GRPO group): prefilled once, decoded together. Member j is seeded with
        params.seed + j. Returns the n request ids."""
        params = params or SamplingParams()
        params.validate()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise R1kitError("empty prompt: give at least one token")
        if len(prompt) >= self.max_seq:
            raise R1kitError(f"prompt of {len(prompt)} tokens does not fit the context of {self.max_seq} tokens "
                             f"(leave room for at least one new token)")
        if not 1 <= n <= self.max_batch:
            raise R1kitError(f"n must be between 1 and max_batch={self.max_batch}, got {n}")
        if params.stop and self.tokenizer is None:
            raise R1kitError("stop strings need an engine with a tokenizer")
        vocab = self.model.cfg.vocab_size
        if not all(0 <= t < vocab for t in prompt):
            raise R1kitError(f"prompt token ids must lie in [0, {vocab})")
        stop_ids = set(params.stop_token_ids)
        if self.eos_id is not None and not params.ignore_eos:
            stop_ids.add(self.eos_id)
        if params.greedy:  # draws nothing: torch's global random state is the caller's (a training run's)
            seed = 0
        elif params.seed is None:
            seed = int(torch.randint(1 << 62, ()))
        else:  # any int; kept below 2^62 so that seed + j fits the int64 stream state
            seed = params.seed % (1 << 62)
        group = [_Request(next(self._ids), prompt, params, seed + j, frozenset(stop_ids)) for j in range(n)]
        self.waiting.append(group)
        self.requests |= {r.id: r for r in group}
        return [r.id for r in group]

    def abort(self, request_id: int) -> bool:
        """Stop a request, queued or running, and free its slot; its Result has finish_reason "abort". Returns
        False when the id is unknown or already finished."""
        r = self.requests.get(request_id)
        if r is None:
            return False
        if r.slot < 0:  # still queued: drop it from its group
            group = next(g for g in self.waiting if r in g)
            group.remove(r)
            if not group:
                self.waiting.remove(group)
        self._finish(r, "abort")
        return True

    def tokens(self, request_id: int) -> list[int]:
        """The tokens generated so far by a running or finished (not yet popped) request."""
        r = self.requests.get(request_id)
        return list(r.tokens) if r is not None else list(self.results[request_id].token_ids)

    def pop_result(self, request_id: int) -> Result:
        return self.results.pop(request_id)

    @property
    def has_work(self) -> bool:
        return bool(self.requests)

    # ------------------------------------------------------------------------------------------------------------
    # the step

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit what fits, then decode one token for every running request. Returns one event per new token."""
        for key, obj in self._graph_tls.items():  # a thread other than the creator's (the server's engine worker)
            if not torch._C._is_key_in_tls(key):
                torch._C._stash_obj_in_tls(key, obj)
        with self.packed.active() if self.packed else nullcontext():
            return self._step()

    def _step(self) -> list[Event]:
        events: list[Event] = []
        while self.waiting and sum(r is None for r in self.slots) >= len(self.waiting[0]):
            events += self._admit(self.waiting.popleft())
        live = [i for i, r in enumerate(self.slots) if r is not None]
        if live:
            events += self._decode_step(live[-1] + 1)
        return events

    def _admit(self, group: list[_Request]) -> list[Event]:
        """Prefill the group's prompt in its first slot, copy that row to the others, sample each first token."""
        free = iter(i for i, r in enumerate(self.slots) if r is None)
        for r in group:
            r.slot = next(free)
            self.slots[r.slot] = r
        prompt, s0 = group[0].prompt, group[0].slot
        n = len(prompt)
        hit = 0
        if self.prefix is not None:
            version = self._weights_version()
            if version != self._prefix_weights:  # an optimiser step or a load changed the weights: stale KV
                self.prefix.clear()
                self._prefix_weights = version
            for blk in self.prefix.lookup(prompt, n - 1):  # keep >= 1 token to prefill: we need its logits
                self.cache.write(s0, hit, blk)
                hit += self.prefix.block_size
        for start in range(hit, n, self.prefill_chunk):  # chunked prefill: rows attend to the cache before them
            end = min(n, start + self.prefill_chunk)
            ids = torch.tensor([prompt[start:end]], device=self.device)
            logits = self._forward(ids, slice(s0, s0 + 1), self.positions[start:end][None], end)  # (1, V)
        if self.prefix is not None:
            bs = self.prefix.block_size
            self.prefix.insert(prompt, n, lambda i: self.cache.read(s0, i * bs, (i + 1) * bs))
        group[0].cached = hit
        for r in group[1:]:
            self.cache.copy_row(s0, r.slot, n)
            r.cached = n
        slots = torch.tensor([r.slot for r in group], device=self.device)
        for r in group:
            p = r.params
            self.temp[r.slot], self.top_p[r.slot], self.min_p[r.slot] = p.temperature, p.top_p, p.min_p
            self.top_k[r.slot], self.seed[r.slot] = p.top_k, r.seed
        self.pos[slots] = n
        self.live[slots] = 1
        return self._sample_and_emit(logits.expand(len(group), -1), group, slots)

    def _weights_version(self) -> tuple[int, ...]:
        """Changes whenever a parameter is updated in place (optimiser steps, load_state_dict) or replaced."""
        return tuple(v for p in self.model.parameters() for v in (p._version, p.data_ptr()))

    def _decode_step(self, hi: int) -> list[Event]:
        """One forward over slot rows [0, hi) (free rows in between compute junk at position 0, unused)."""
        rows = [self.slots[i] for i in range(hi)]
        if self.compiled:  # static shapes: every slot, every position
            logits = self._decode(self.tok[:, None], self.pos[:, None], self.max_seq)[:hi]
        else:
            lengths = [len(r.prompt) + len(r.tokens) for r in rows if r is not None]
            # rows of one length (a fanned-out group) need no mask: free rows read junk, never used
            masked = min(lengths) < max(lengths) and not self.cache.per_row_kernel
            logits = self._decode(self.tok[:hi, None], self.pos[:hi, None], max(lengths), masked)
        self.pos += self.live
        live = [r for r in rows if r is not None]
        idx = torch.tensor([r.slot for r in live], device=self.device) if len(live) < hi else slice(0, hi)
        return self._sample_and_emit(logits[idx], live, idx)

    def _decode_forward(self, tok: torch.Tensor, pos: torch.Tensor, length: int, masked: bool = True):
        """tok, pos (B, 1) for slot rows [0, B) -> logits (B, V)."""
        return self._forward(tok, slice(0, tok.shape[0]), pos, length, masked)

    def _forward(self, ids: torch.Tensor, rows: slice, pos: torch.Tensor, length: int, masked: bool = True):
        """ids, pos (B, T) for cache rows `rows`, attending to cache positions [0, length) -> last logits (B, V).
        Unmasked, every row reads all `length` positions (T == 1 only)."""
        self.cache.bind(rows, pos, length)
        mask = None
        if masked:  # causal per row, additive: built once per step rather than converted in every layer
            allowed = self.positions[:length] <= pos[:, None, :, None]  # (B, 1, T, length)
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(~allowed, -torch.inf)
        return self.model(ids, positions=pos, cache=self.cache, attn_mask=mask, last_only=True)[:, -1]

    def _sample_and_emit(self, logits: torch.Tensor, reqs: list[_Request], slots) -> list[Event]:
        """Sample rows of logits (B, V) for requests reqs in cache slots `slots`; append, check stops, emit."""
        sampling = [i for i, r in enumerate(reqs) if not r.params.greedy]
        uniform = None
        if sampling:
            # each row's own stream, keyed by its seed and the position of the token: batch-independent samples
            uniform = uniforms(self.seed[slots], self.pos[slots])
            ps = [reqs[i].params for i in sampling]
            flags = (max(p.top_k for p in ps), any(p.top_p < 1 for p in ps), any(p.min_p > 0 for p in ps),
                     len(sampling) < len(reqs))
        else:
            flags = (0, False, False, True)
        tok, lp, slp = sample(logits, self.temp[slots], self.top_k[slots], self.top_p[slots], self.min_p[slots],
                              uniform, flags)
        self.tok[slots] = tok
        host = torch.stack([tok.double(), lp.double(), slp.double()], 1).tolist()  # the step's one host sync
        events = []
        for r, (t, a, b) in zip(reqs, host):
            t = int(t)
            r.tokens.append(t)
            r.logprobs.append(a)
            r.sample_logprobs.append(b)
            reason = self._stop_reason(r, t)
            if reason:
                self._finish(r, reason)
            events.append(Event(r.id, t, reason is not None))
        return events

    def _stop_reason(self, r: _Request, t: int) -> str | None:
        if t in r.stop_ids:
            return "stop"
        if r.params.stop:
            # decode a window long enough to hold any stop string; earlier text was checked at earlier steps
            window = max(map(len, r.params.stop)) + 8
            text = self.tokenizer.decode(r.tokens[-window:])
            if any(s in text for s in r.params.stop):
                return "stop"
        if len(r.tokens) >= r.params.max_new_tokens or len(r.prompt) + len(r.tokens) > self.max_seq:
            return "length"
        return None

    def _finish(self, r: _Request, reason: str) -> None:
        del self.requests[r.id]
        if r.slot >= 0:
            self.slots[r.slot] = None
            self.pos[r.slot] = self.live[r.slot] = 0  # a free row computes junk at position 0 until reused
        text = None
        if self.tokenizer is not None:
            text = self.tokenizer.decode(r.tokens)
            cuts = [i for s in r.params.stop if (i := text.find(s)) >= 0]
            text = text[:min(cuts)] if cuts else text
        self.results[r.id] = Result(r.id, r.prompt, r.tokens, r.logprobs, r.sample_logprobs, reason,
                                    len(r.prompt), r.cached, text)

    # ------------------------------------------------------------------------------------------------------------

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None, n: int = 1,
                 on_token=None) -> list[Result]:
        """Sample n completions of each prompt (token-id lists, or strings with a tokenizer). Returns the results
        prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...]. on_token(event) is called for every new token."""
        if isinstance(prompts, (str, bytes)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise R1kitError(f"{len(plist)} SamplingParams for {len(prompts)} prompts")
        ids = []
        for p, sp in zip(prompts, plist):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise R1kitError("string prompts need an engine with a tokenizer")
                p = self.tokenizer.encode(p)
            ids += self.add_group(p, sp, n)
        while any(i not in self.results for i in ids):
            for ev in self.step():
                if on_token is not None:
                    on_token(ev)
        return [self.pop_result(i) for i in ids]


def _cudagraph_tls() -> dict:
    """The CUDA-graph trees' state in this thread's storage, for torch < 2.13 only. There a compiled step called from
    another Python thread failed an assertion (pytorch#123177): the state existed only in the importing thread and in
    the threads autograd spawns. `step` hands it to the calling thread as autograd does. 2.13 (r1kit's pin) sets the
    state up in any thread itself."""
    if torch.__version__ >= "2.13":
        return {}
    from torch._inductor import cudagraph_trees as ct
    keys = ("tree_manager_containers", "tree_manager_locks")
    if not all(hasattr(ct.local, k) or torch._C._is_key_in_tls(k) for k in keys):
        return {}
    return {k: ct.get_obj(ct.local, k) for k in keys}
