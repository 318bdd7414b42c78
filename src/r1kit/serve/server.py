"""What the endpoints share: request -> prompt and sampling parameters, admission, and the token stream of a job.

R1 usage recommendations are built in: temperature 0.6 and top_p 0.95 by default; system messages merged into the
first user turn; the reply starts inside the thought (`<｜Assistant｜><think>\\n`). DeepThink off
(`"thinking": {"type": "disabled"}` or `"think": false`) ends the prompt with an empty, closed thought, so the reply
is all answer. With `--template model` the model's own template is used, and the reply is answer unless it opens
with `<think>` itself.

Stop strings apply to the answer, never to the thought, so on chat requests they are checked here (ChoiceStream),
not by the engine. Tools: see tools.py; a template without R1's tool format gets a 400, as does
`response_format` json_object / json_schema (decoding is not constrained to JSON).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from r1kit.engine.engine import Engine
from r1kit.engine.sampling import SamplingParams
from r1kit.errors import R1kitError
from r1kit.serve.errors import APIError
from r1kit.serve.reasoning import ChoiceStream, ReasoningParser, initial_reasoning_state, render_prompt
from r1kit.serve.schemas import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_STOP_CHARS,
    MAX_TOKENS_LIMIT,
    ChatCompletionRequest,
    CompletionRequest,
    CompletionTokensDetails,
    NamedToolChoice,
    Usage,
)
from r1kit.serve.tools import ToolCallParser, forced_call_opening, has_tool_format
from r1kit.serve.worker import EngineWorker, Job
from r1kit.tokenizer import Tokenizer

DEFAULT_MAX_QUEUE = 64  # requests waiting beyond the max_batch running ones; one more gets 429
KEEPALIVE_S = 15.0  # SSE comment after this long without a token (DeepSeek sends ": keep-alive" under load)
SERVE_TEMPLATES = ("r1", "r1-zero", "model")


@dataclass
class ChatPlan:
    """A chat request made ready for the engine."""
    ids: list[int]
    text: str  # the rendered prompt
    in_reasoning: bool | None  # the reasoning parser's start state (see ReasoningParser)
    tools: bool  # parse tool calls out of the answer
    opening: str  # answer text the prompt already wrote (a forced call's opening)
    last_user: str  # for the request log with --log-prompts


class Server:
    """The tokenizer, the engine worker, the limits and the admission count."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, model_name: str, max_queue: int = DEFAULT_MAX_QUEUE,
                 template: str = "r1", reasoning: bool = True):
        if template not in SERVE_TEMPLATES:
            raise R1kitError(f"unknown template {template!r}; expected one of {', '.join(SERVE_TEMPLATES)}")
        if template == "model" and tokenizer.chat_template is None:
            raise R1kitError("template 'model' needs a tokenizer with a chat_template; use 'r1'")
        if max_queue < 0:
            raise R1kitError(f"max_queue must be >= 0, got {max_queue}")
        self.engine, self.tok, self.model_name = engine, tokenizer, model_name
        self.worker = EngineWorker(engine)
        self.template, self.reasoning = template, reasoning
        self.max_seq = engine.max_seq
        self.capacity = engine.max_batch + max_queue  # samples in flight (running + queued) before 429
        self.active = 0
        self.created = int(time.time())
        self.fingerprint = f"fp_r1kit_{uuid.uuid4().hex[:8]}"

    # -- request -> prompt ids and sampling parameters -----------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist (this server serves `{self.model_name}`)",
                           param="model", code="model_not_found")

    def chat_prompt(self, req: ChatCompletionRequest) -> ChatPlan:
        """Render and tokenize a chat request (CPU work: the routes run it off the event loop)."""
        if req.response_format is not None and req.response_format.type != "text":
            raise APIError(400, f"response_format {req.response_format.type} is not supported: r1kit does not "
                                f"constrain decoding to JSON (nor does DeepSeek's reasoner); ask for JSON in the "
                                f"prompt instead", param="response_format", code="unsupported_parameter")
        tools = [t.model_dump(exclude_none=True) for t in req.tools or ()] if req.tool_choice != "none" else []
        if req.tool_choice not in (None, "none") and not req.tools:
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        uses_tools = bool(tools) or any(m.role == "tool" or m.tool_calls for m in req.messages)
        if uses_tools and self.template != "r1":
            raise APIError(400, "tools need the R1 chat template (serve with --template r1): r1kit cannot pass tools "
                                "to a model's own template", param="tools", code="unsupported_parameter")
        if uses_tools and not has_tool_format(self.tok):
            raise APIError(400, "this model's tokenizer has no R1 tool tokens (<｜tool▁calls▁begin｜> ...), so it "
                                "cannot call tools", param="tools", code="unsupported_parameter")
        forced = ""
        if tools and req.tool_choice == "required":
            forced = forced_call_opening(None)
        elif tools and isinstance(req.tool_choice, NamedToolChoice):
            name = req.tool_choice.function.name
            if name not in {t["function"]["name"] for t in tools}:
                raise APIError(400, f"tool_choice names {name!r}, which is not among the tools",
                               param="tool_choice.function.name")
            forced = forced_call_opening(name)
        messages, prefix = [], None
        for i, m in enumerate(req.messages):
            if m.reasoning_content is not None:
                raise APIError(400, "reasoning_content is not allowed in input messages: drop it from earlier "
                                    "assistant turns before sending them back (as DeepSeek's API requires)",
                               param=f"messages.{i}.reasoning_content", code="invalid_reasoning_content")
            if m.prefix:
                if m.role != "assistant" or i != len(req.messages) - 1:
                    raise APIError(400, "prefix is allowed only on the last message, an assistant one",
                                   param=f"messages.{i}.prefix")
                prefix = m.text()
                continue
            msg = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            messages.append(msg)
        if not any(m["role"] == "user" for m in messages):
            raise APIError(400, "messages must contain a user message", param="messages")
        if prefix is not None and forced:
            raise APIError(400, "a prefix message cannot be combined with a forced tool_choice", param="tool_choice")
        thinking = req.thinking_enabled()
        try:
            ids, text = render_prompt(self.tok, messages, self.template, thinking, encode=self._encode,
                                      tools=tools or None, forced=forced, prefix=prefix)
        except R1kitError as e:
            raise APIError(400, str(e), param="messages") from None
        if self.template == "model" and not thinking:
            in_reasoning = False  # thinking off: whatever the model writes is the answer
        else:
            in_reasoning = initial_reasoning_state(text, forced=self.template == "r1")
        last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return ChatPlan(ids, text, in_reasoning, bool(tools), forced, last_user)

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        for name, bad in (("logprobs", req.logprobs is not None), ("echo", req.echo),
                          ("best_of", (req.best_of or 1) > 1), ("suffix", req.suffix is not None)):
            if bad:
                raise APIError(400, f"{name} is not supported", param=name, code="unsupported_parameter")
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            vocab = self.engine.model.cfg.vocab_size
            if not all(0 <= t < vocab for t in p):
                raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
            return [list(p)]
        prompts = [self._encode(t, add_bos=self.tok.add_bos) for t in ([p] if isinstance(p, str) else p)]
        if any(not ids for ids in prompts):
            raise APIError(400, "empty prompt", param="prompt")
        return prompts

    def _encode(self, text: str, add_bos: bool = False) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "text is not valid Unicode (it holds a lone surrogate)",
                           code="invalid_unicode") from None
        return self.tok.encode(text, add_bos=add_bos)

    def sampling(self, req, prompt_len: int, engine_stops: bool = True) -> SamplingParams:
        """The engine's parameters. engine_stops False: stop strings are left to ChoiceStream (chat: they must
        not end the reply inside the thought)."""
        room = self.max_seq - prompt_len  # positions left for new tokens
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {self.max_seq} tokens, and the prompt has "
                                f"{prompt_len} tokens", code="context_length_exceeded",
                           param="prompt" if isinstance(req, CompletionRequest) else "messages")
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if max_tokens is not None and max_tokens > room:
            raise APIError(400, f"This model's maximum context length is {self.max_seq} tokens and the prompt has "
                                f"{prompt_len}, so max_tokens can be at most {room} (got {max_tokens})",
                           param="max_tokens", code="context_length_exceeded")
        if req.n > self.engine.max_batch:
            raise APIError(400, f"n can be at most {self.engine.max_batch} (the server's max_batch)", param="n")
        if getattr(req, "logprobs", None) or getattr(req, "top_logprobs", None) is not None:
            raise APIError(400, "logprobs are not supported (as with DeepSeek's reasoner)", param="logprobs",
                           code="unsupported_parameter")
        stop = req.stop_list()
        if any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stop):
            raise APIError(400, f"stop strings must have 1 to {MAX_STOP_CHARS} characters", param="stop")
        for s in stop:
            self._encode(s)
        return SamplingParams(
            temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
            top_p=DEFAULT_TOP_P if req.top_p is None else req.top_p,
            top_k=max(req.top_k or 0, 0), min_p=req.min_p or 0.0,
            max_new_tokens=min(max_tokens or room, MAX_TOKENS_LIMIT),
            stop=tuple(stop) if engine_stops else (), seed=req.seed, ignore_eos=req.ignore_eos)

    def chat_choices(self, n: int, stop: list[str], plan: ChatPlan) -> list[ChoiceStream]:
        return [ChoiceStream(self.tok, stop, ReasoningParser(plan.in_reasoning) if self.reasoning else None,
                             trim_answer=True, tools=ToolCallParser(plan.opening) if plan.tools else None)
                for _ in range(n)]

    def completion_choices(self, n: int, stop: list[str]) -> list[ChoiceStream]:
        return [ChoiceStream(self.tok, stop, None) for _ in range(n)]

    # -- admission and the token stream of one job ---------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int) -> Job:
        if self.active + n > self.capacity:
            raise APIError(429, f"server busy: {self.active} samples in flight and the limit is {self.capacity}; "
                                f"retry later", type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        job = Job(prompt_ids, params, n)
        self.active += n
        self.worker.submit(job)
        return job

    def release(self, job: Job) -> None:
        """The request is over (finished, failed or disconnected): abort what still runs, free its admission."""
        if job.released:
            return
        job.released = True
        self.active -= job.n
        if job.open:
            self.worker.cancel(job)

    async def updates(self, job: Job, choices: list[ChoiceStream], keepalive: bool = False):
        """Yield (choice index, reasoning delta, content delta, new tool calls, finish_reason or None) as tokens
        arrive; with keepalive, yield None after KEEPALIVE_S without any. Returns early if the client disconnected.

        Tokens that queued up while the previous update was being sent are merged into one update per choice, so
        a slow client (or a busy server) gets fewer, larger SSE chunks instead of falling further behind."""
        signal = None  # "disconnected" or "error: ..." met while draining
        while job.open:
            if signal is None:
                try:
                    async with asyncio.timeout(KEEPALIVE_S if keepalive else None):
                        batch = await job.queue.get()
                except TimeoutError:
                    yield None
                    continue
            else:
                batch, signal = signal, None
            if isinstance(batch, str):
                if batch == "disconnected":
                    return
                failure = "engine failure" in batch
                raise APIError(500 if failure else 400, batch.removeprefix("error: "),
                               type="server_error" if failure else "invalid_request_error")
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
            batch = list(batch)
            while not job.queue.empty():
                more = job.queue.get_nowait()
                if isinstance(more, str):
                    signal = more
                    break
                batch += more
            pending: dict[int, list] = {}  # choice index -> [reasoning, content, calls] not yet yielded
            for index, token, result in batch:
                if index not in job.open:
                    continue
                ch = choices[index]
                r, c = ch.add(token)
                acc = pending.setdefault(index, ["", "", []])
                acc[0] += r
                acc[1] += c
                acc[2] += ch.take_calls()
                if result is None and ch.finish_reason is None:
                    continue
                if result is None:  # a stop string in the answer: end the sample here
                    self.worker.cancel(job, [index])
                elif index == 0:  # the other choices of a group reuse choice 0's prefill (a copy, not a hit)
                    job.cached = result.cached_tokens
                r2, c2 = ch.finish(result)
                job.open.discard(index)
                del pending[index]
                yield index, acc[0] + r2, acc[1] + c2, acc[2] + ch.take_calls(), ch.finish_reason
            for index, (r, c, calls) in pending.items():
                if r or c or calls:
                    yield index, r, c, calls, None

    def usage(self, jobs: list[Job], choices: list[list[ChoiceStream]]) -> Usage:
        """Usage of one or more jobs (a /v1/completions request with several prompts has one job each)."""
        n_prompt = sum(len(j.prompt_ids) for j in jobs)
        cached = sum(min(j.cached, len(j.prompt_ids)) for j in jobs)
        completion = sum(len(ch.ids) for chs in choices for ch in chs)
        return Usage(prompt_tokens=n_prompt, completion_tokens=completion, total_tokens=n_prompt + completion,
                     prompt_cache_hit_tokens=cached, prompt_cache_miss_tokens=n_prompt - cached,
                     completion_tokens_details=CompletionTokensDetails(
                         reasoning_tokens=sum(ch.reasoning_tokens for chs in choices for ch in chs)))
