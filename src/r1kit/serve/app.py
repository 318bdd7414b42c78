"""OpenAI-compatible HTTP server over the engine, with DeepSeek-R1's reasoning split (architecture.md 8).

    r1kit serve ckpt/ --port 8000         # in Python: create_app(model, tokenizer) + serve_in_thread(app)
    curl localhost:8000/v1/chat/completions -d '{"model": "ckpt", "messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: POST /v1/chat/completions (SSE with "stream": true), POST /v1/completions, GET /v1/models, GET /health,
GET / (the web chat, static/index.html).

A thin adapter (style.md item 9): pydantic requests (schemas.py, where every limit is a named constant), the chat
template rendered only by the tokenizer module, and one `EngineWorker` thread that owns the engine. Requests reach it
through a deque; after every `engine.step()` it hands each request its new tokens with one
`loop.call_soon_threadsafe`, into that request's asyncio.Queue. All requests share the engine's continuous batch.

R1 usage recommendations are built in (7.3): temperature 0.6 and top_p 0.95 by default; system messages merged into
the first user turn (render_r1); the reply starts inside the thought (`<｜Assistant｜><think>\\n`). DeepThink off
(`"thinking": {"type": "disabled"}` or `"think": false`) ends the prompt with an empty, closed thought
`<｜Assistant｜><think>\\n\\n</think>\\n\\n` (what R1 itself writes when it skips thinking), so the reply is all answer.

The response carries DeepSeek's `message.reasoning_content` / `delta.reasoning_content` (reasoning.py) and its usage
fields: prompt_cache_hit_tokens from the engine's real prefix cache (whole 64-token blocks, 8.5),
prompt_cache_miss_tokens, completion_tokens_details.reasoning_tokens. As DeepSeek's API does, `reasoning_content`
inside request messages and `logprobs` are refused with 400. Unlike DeepSeek's reasoner, temperature/top_p are
honoured (this server also samples for evaluation).

Failure modes: every bad request is a 4xx with an OpenAI error body {"error": {"message", "type", "param", "code"}};
more requests than max_batch + max_queue in flight -> 429; a client that disconnects has its request aborted and its
slot freed; a streaming request that waits longer than KEEPALIVE_S for a token gets an SSE comment `: keep-alive`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1kit.engine.engine import Engine
from r1kit.engine.sampling import SamplingParams
from r1kit.errors import R1kitError
from r1kit.serve.reasoning import ChoiceStream, ReasoningParser, initial_reasoning_state, render_prompt
from r1kit.serve.schemas import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_BODY_BYTES,
    MAX_STOP_CHARS,
    MAX_TOKENS_LIMIT,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    StreamOptions,
    TextPart,
    ThinkingConfig,
    Usage,
)
from r1kit.tokenizer import Tokenizer

log = logging.getLogger("r1kit.serve")

DEFAULT_MAX_QUEUE = 64  # requests waiting beyond the max_batch running ones; one more gets 429
KEEPALIVE_S = 15.0  # SSE comment after this long without a token (DeepSeek sends ": keep-alive" under load)
SERVE_TEMPLATES = ("r1", "model")
STATIC = Path(__file__).parent / "static"
_FIELD_NAMES = {name for m in (ChatCompletionRequest, CompletionRequest, ChatMessage, TextPart, ThinkingConfig,
                               StreamOptions) for name in m.model_fields}


class APIError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status (OpenAI's shape)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------------------------------
# the engine worker: one thread owns the engine


class Job:
    """One HTTP request's n samples of one prompt. `queue` receives, per engine step, a list of
    (choice index, token, Result or None) tuples, or a string: "error: ..." or "disconnected"."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, n: int):
        self.prompt_ids, self.params, self.n = prompt_ids, params, n
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []  # engine request ids, set by the worker on admission
        self.open = set(range(n))  # choices not finished yet (as the endpoint sees them)
        self.cached = 0  # prompt tokens the prefix cache supplied (from choice 0's Result)
        self.cancelled = False
        self.released = False


class EngineWorker:
    """Drives `engine.step()` in a background thread. `submit` and `cancel` may be called from any thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._new: deque[Job] = deque()
        self._cancel: deque[tuple[Job, list[int] | None]] = deque()  # (job, choice indices or None = all)
        self._owner: dict[int, tuple[Job, int]] = {}  # engine request id -> (job, choice index)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running = self.waiting = self.max_running = 0  # published after every step, for /health
        self.steps = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="r1kit-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        self._new.append(job)
        self._wake.set()

    def cancel(self, job: Job, choices: list[int] | None = None) -> None:
        """Abort some choices of a job, or all of it (queued or running) when choices is None."""
        if choices is None:
            job.cancelled = True  # a job not admitted yet is skipped
        self._cancel.append((job, choices))
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._iteration()
            except Exception:  # a bug here must not silently stop serving: log it and go on
                if not self._stop:
                    log.exception("engine worker iteration failed")
                    time.sleep(0.1)

    def _iteration(self) -> None:
        eng = self.engine
        if not (eng.has_work or self._new or self._cancel):
            self._wake.wait()
        self._wake.clear()
        out: dict[Job, list | str] = defaultdict(list)
        while self._cancel:
            self._drop(*self._cancel.popleft())
        while self._new:
            job = self._new.popleft()
            if job.cancelled:
                continue
            try:
                job.ids = eng.add_group(job.prompt_ids, job.params, job.n)
            except Exception as e:  # validated before, so this is rare: report it to that request only
                out[job] = f"error: {e}"
                continue
            self._owner |= {rid: (job, j) for j, rid in enumerate(job.ids)}
        if eng.has_work:
            try:
                events = eng.step()
            except Exception as e:  # e.g. out of memory: fail every request in flight, keep serving
                log.exception("engine step failed")
                for job in {j for j, _ in self._owner.values()}:
                    self._drop(job, None)
                    out[job] = f"error: engine failure ({type(e).__name__}: {e})"
                events = []
            self.steps += 1
            for ev in events:
                owner = self._owner.get(ev.request_id)
                if owner is None:
                    continue
                result = None
                if ev.finished:
                    result = eng.pop_result(ev.request_id)
                    del self._owner[ev.request_id]
                out[owner[0]].append((owner[1], ev.token, result))
        self.running = sum(s is not None for s in eng.slots)
        self.waiting = sum(len(g) for g in eng.waiting)
        self.max_running = max(self.max_running, self.running)
        if out:
            self.loop.call_soon_threadsafe(_deliver, out)

    def _drop(self, job: Job, choices: list[int] | None) -> None:
        """Abort unfinished samples and discard their results (the engine keeps a Result until it is popped)."""
        for j, rid in enumerate(job.ids):
            if (choices is None or j in choices) and self._owner.pop(rid, None) is not None \
                    and self.engine.abort(rid):
                self.engine.pop_result(rid)


def _deliver(out: dict) -> None:
    for job, items in out.items():
        job.queue.put_nowait(items)


# ---------------------------------------------------------------------------------------------------------------------
# the server state shared by the endpoints


class Server:
    """What the endpoints share: the tokenizer, the engine worker, the limits and the admission count."""

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

    def chat_prompt(self, req: ChatCompletionRequest) -> tuple[list[int], str]:
        """The prompt's ids and text. DeepThink on: the R1 `<think>\\n` prefill; off: an empty closed thought."""
        messages = []
        for i, m in enumerate(req.messages):
            if m.reasoning_content is not None:
                raise APIError(400, "reasoning_content is not allowed in input messages: drop it from earlier "
                                    "assistant turns before sending them back (as DeepSeek's API requires)",
                               param=f"messages.{i}.reasoning_content", code="invalid_reasoning_content")
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": m.text()})
        if not any(m["role"] == "user" for m in messages):
            raise APIError(400, "messages must contain a user message", param="messages")
        try:
            return render_prompt(self.tok, messages, self.template, req.thinking_enabled(), encode=self._encode)
        except R1kitError as e:
            raise APIError(400, str(e), param="messages") from None

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

    def sampling(self, req, prompt_len: int) -> SamplingParams:
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
            stop=tuple(stop), seed=req.seed, ignore_eos=req.ignore_eos)

    # -- admission and the token stream of one job ---------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int) -> Job:
        if self.active + n > self.capacity:
            raise APIError(429, f"server busy: {self.active} samples in flight and the limit is {self.capacity}; "
                                f"retry later", type="rate_limit_error", code="rate_limit_exceeded")
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
        """Yield (choice index, reasoning delta, content delta, finish_reason or None) as tokens arrive; with
        keepalive, yield None after KEEPALIVE_S without any. Returns early if the client disconnected.

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
            batch = list(batch)
            while not job.queue.empty():
                more = job.queue.get_nowait()
                if isinstance(more, str):
                    signal = more
                    break
                batch += more
            pending: dict[int, list[str]] = {}  # choice index -> [reasoning, content] not yet yielded
            for index, token, result in batch:
                if index not in job.open:
                    continue
                ch = choices[index]
                r, c = ch.add(token)
                acc = pending.setdefault(index, ["", ""])
                acc[0] += r
                acc[1] += c
                if result is None and ch.finish_reason is None:
                    continue
                if result is None:  # a stop string the engine's own check missed: end the sample here
                    self.worker.cancel(job, [index])
                elif index == 0:  # the other choices of a group reuse choice 0's prefill (a copy, not a hit)
                    job.cached = result.cached_tokens
                r2, c2 = ch.finish(result)
                job.open.discard(index)
                del pending[index]
                yield index, acc[0] + r2, acc[1] + c2, ch.finish_reason
            for index, (r, c) in pending.items():
                if r or c:
                    yield index, r, c, None

    def usage(self, job: Job, choices: list[ChoiceStream]) -> dict:
        n_prompt = len(job.prompt_ids)
        completion = sum(len(ch.ids) for ch in choices)
        cached = min(job.cached, n_prompt)
        return Usage(prompt_tokens=n_prompt, completion_tokens=completion, total_tokens=n_prompt + completion,
                     prompt_cache_hit_tokens=cached, prompt_cache_miss_tokens=n_prompt - cached,
                     completion_tokens_details={"reasoning_tokens": sum(ch.reasoning_tokens for ch in choices)}
                     ).model_dump()

    def new_choices(self, n: int, stop: list[str], split: bool, in_reasoning: bool) -> list[ChoiceStream]:
        return [ChoiceStream(self.tok, stop, ReasoningParser(in_reasoning) if split else None) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------------
# HTTP


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _js(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class SSEResponse(StreamingResponse):
    """A StreamingResponse that always closes its generator, so the generator's `finally` (which aborts the
    request) runs even when a client disconnect cancelled the stream between two chunks."""

    def __init__(self, content, **kw):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, **kw)

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class BodyLimit:
    """ASGI middleware: 413 for a body over max_bytes (by Content-Length, or counted as it arrives)."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = f"request body over {self.max_bytes} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await error_response(413, too_big, code="request_too_large")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise APIError(413, too_big, code="request_too_large")
            return msg

        await self.app(scope, limited, send)


async def _watch_disconnect(request: Request, jobs: list[Job]) -> None:
    """For non-streaming requests: wake the handler when the client goes away, so it aborts the request."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.queue.put_nowait("disconnected")


def create_app(model, tokenizer: Tokenizer, *, model_name: str = "r1kit", max_batch: int = 16,
               max_seq_len: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE, template: str = "r1",
               reasoning: bool = True, prefix_cache_bytes: int = 1 << 30, compile: bool = False) -> FastAPI:
    """The FastAPI app serving `model` (a Transformer, or anything with its interface) under `model_name`.

    The engine worker thread starts and stops with the app (lifespan), so run it under uvicorn or enter
    `TestClient(app)` as a context manager. `app.state.server` is the `Server` (its `worker` has live stats).
    """
    engine = Engine(model, tokenizer, max_batch=max_batch, max_seq_len=max_seq_len,
                    prefix_cache_bytes=prefix_cache_bytes, compile=compile)
    srv = Server(engine, tokenizer, model_name, max_queue, template, reasoning)

    @asynccontextmanager
    async def lifespan(app):
        srv.worker.start(asyncio.get_running_loop())
        yield
        srv.worker.stop()

    app = FastAPI(title="r1kit", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API with DeepSeek's reasoning_content")
    app.state.server = srv
    app.add_middleware(BodyLimit)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return error_response(e.status, e.message, e.type, e.param, e.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        errors = e.errors() or [{}]
        # a union field reports one error per member ("Input should be a valid string" for a list...): prefer the
        # error that is not a plain type mismatch, and name the field without pydantic's member tags
        err = next((x for x in errors if not x.get("type", "").endswith("_type") and x.get("type") != "none_required"),
                   errors[0])
        loc = [str(x) for x in err.get("loc", ()) if isinstance(x, int) or x in _FIELD_NAMES]
        param = ".".join(loc) or None
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            msg, param = "We could not parse the JSON body of your request", None
        elif param:
            msg = f"{param}: {msg}"
        return error_response(400, msg, param=param, code=err.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        log.exception("unexpected error")
        return error_response(500, f"internal error ({type(e).__name__})", type="server_error")

    # -- endpoints ---------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        w = srv.worker
        alive = w._thread is not None and w._thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "engine stopped", "model": srv.model_name,
                             "running": w.running, "waiting": w.waiting, "in_flight": srv.active,
                             "capacity": srv.capacity, "steps": w.steps}, status_code=200 if alive else 503)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=srv.model_name, created=srv.created, max_model_len=srv.max_seq)])

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                         429: {"model": ErrorResponse}})
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        srv.check_model(req.model)
        ids, text = srv.chat_prompt(req)
        params = srv.sampling(req, len(ids))
        in_reasoning = initial_reasoning_state(text)
        choices = srv.new_choices(req.n, list(params.stop), srv.reasoning, in_reasoning)
        job = srv.submit(ids, params, req.n)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": srv.model_name,
                "system_fingerprint": srv.fingerprint}
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return SSEResponse(_chat_stream(srv, job, choices, meta, usage))
        watcher = asyncio.create_task(_watch_disconnect(request, [job]))
        try:
            async for _ in srv.updates(job, choices):
                pass
        finally:
            watcher.cancel()
            srv.release(job)
        out = []
        for i, ch in enumerate(choices):
            reasoning, content = ch.result_text()
            out.append({"index": i, "message": {"role": "assistant", "content": content,
                                                "reasoning_content": reasoning},
                        "logprobs": None, "finish_reason": ch.finish_reason or "stop"})
        return JSONResponse({**meta, "object": "chat.completion", "choices": out, "usage": srv.usage(job, choices)})

    @app.post("/v1/completions", response_model=Completion,
              responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                         429: {"model": ErrorResponse}})
    async def completions(req: CompletionRequest, request: Request):
        srv.check_model(req.model)
        prompts = srv.completion_prompts(req)
        if len(prompts) > 1 and req.stream:
            raise APIError(400, "streaming takes one prompt", param="prompt")
        params = [srv.sampling(req, len(p)) for p in prompts]
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": srv.model_name,
                "system_fingerprint": srv.fingerprint}
        if req.stream:
            job = srv.submit(prompts[0], params[0], req.n)
            choices = srv.new_choices(req.n, list(params[0].stop), False, False)
            usage = req.stream_options is not None and req.stream_options.include_usage
            return SSEResponse(_completion_stream(srv, job, choices, meta, usage))
        jobs, all_choices = [], []
        try:
            for p, sp in zip(prompts, params):
                jobs.append(srv.submit(p, sp, req.n))
                all_choices.append(srv.new_choices(req.n, list(sp.stop), False, False))
            watcher = asyncio.create_task(_watch_disconnect(request, jobs))
            try:
                for job, choices in zip(jobs, all_choices):
                    async for _ in srv.updates(job, choices):
                        pass
                    if job.open:  # disconnected
                        break
            finally:
                watcher.cancel()
        finally:
            for job in jobs:
                srv.release(job)
        out, usages = [], []
        for k, (job, choices) in enumerate(zip(jobs, all_choices)):
            for i, ch in enumerate(choices):
                out.append({"index": k * req.n + i, "text": ch.result_text()[1] or "", "logprobs": None,
                            "finish_reason": ch.finish_reason or "stop"})
            usages.append(srv.usage(job, choices))
        usage = {key: sum(u[key] for u in usages) for key in usages[0] if key != "completion_tokens_details"}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        return JSONResponse({**meta, "object": "text_completion", "choices": out, "usage": usage})

    return app


def _chat_stream(srv: Server, job: Job, choices: list[ChoiceStream], meta: dict, include_usage: bool):
    """SSE chunks: a role chunk per choice, then reasoning_content deltas, content deltas, a finish chunk."""
    base = {**meta, "object": "chat.completion.chunk"}
    # every chunk is this prefix + a choice: built once, so a token costs one json.dumps of its text
    head = "data: " + json.dumps({**base, "choices": None}, ensure_ascii=False).removesuffix("null}") + '[{"index": '

    def chunk(index: int, delta: str, finish: str | None = None) -> str:
        return f'{head}{index}, "delta": {delta}, "logprobs": null, "finish_reason": {json.dumps(finish)}}}]}}\n\n'

    async def chunks():
        for i in range(len(choices)):
            yield chunk(i, '{"role": "assistant", "content": ""}')
        async for up in srv.updates(job, choices, keepalive=True):
            if up is None:
                yield ": keep-alive\n\n"
                continue
            index, r, c, finish = up
            out = []
            if r:
                out.append(chunk(index, f'{{"content": null, "reasoning_content": {_js(r)}}}'))
            if c:
                out.append(chunk(index, f'{{"content": {_js(c)}, "reasoning_content": null}}'))
            if finish:
                out.append(chunk(index, "{}", finish))
            yield "".join(out)

    return _stream(srv, job, choices, base, include_usage, chunks())


def _completion_stream(srv: Server, job: Job, choices: list[ChoiceStream], meta: dict, include_usage: bool):
    base = {**meta, "object": "text_completion"}

    async def chunks():
        async for up in srv.updates(job, choices, keepalive=True):
            if up is None:
                yield ": keep-alive\n\n"
                continue
            index, _, c, finish = up
            yield _sse({**base, "choices": [{"index": index, "text": c, "logprobs": None, "finish_reason": finish}]})

    return _stream(srv, job, choices, base, include_usage, chunks())


async def _stream(srv: Server, job: Job, choices: list[ChoiceStream], base: dict, include_usage: bool, chunks):
    """The part both SSE streams share: the chunks, an API error as an error event, the usage chunk, [DONE]; the
    job's slots are released however the stream ends (a client that disconnects included)."""
    try:
        try:
            async for s in chunks:
                yield s
        except APIError as e:
            yield _sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
            return
        if include_usage:
            yield _sse({**base, "choices": [], "usage": srv.usage(job, choices)})
        yield "data: [DONE]\n\n"
    finally:
        await chunks.aclose()
        srv.release(job)


# ---------------------------------------------------------------------------------------------------------------------
# `r1kit serve`


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          max_seq_len: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE, template: str = "r1",
          reasoning: bool = True, served_model_name: str | None = None, prefix_cache_mb: int = 1024,
          device: str | None = None, threads: int | None = None, compile: bool = False) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (with DeepSeek's reasoning_content) and a web chat at /.

    Args:
        model: an HF checkpoint folder, a .gguf file or a preset name (a preset has RANDOM weights).
        host: the interface to listen on (127.0.0.1 = this machine only; 0.0.0.0 = every interface).
        port: the TCP port.
        max_batch: requests decoded together (engine slots); more wait in the queue.
        max_seq_len: positions per request, prompt + completion; default min(model context, 4096).
        max_queue: requests waiting for a slot beyond max_batch; one more is answered 429.
        template: r1 (DeepSeek-R1 chat template, with the <think> prefill and the DeepThink switch) or model (the
            tokenizer's own chat template).
        reasoning: split the reply into reasoning_content and content at </think>; --no-reasoning puts
            everything in content.
        served_model_name: the model id clients send; default the model argument's last path component.
        prefix_cache_mb: memory for reused prompt prefixes (DeepSeek-style context caching); 0 = off.
        device: cpu or cuda; default cuda when available (bf16), else cpu (fp32).
        threads: torch CPU threads; default torch's choice.
        compile: compile the decode step (static shapes; CUDA graphs on GPU).
    """
    import warnings

    import torch
    import uvicorn

    from r1kit.engine.load import load_for_inference, spec_kind

    if threads:
        torch.set_num_threads(threads)
    if spec_kind(model) == "preset":
        print(f"warning: {model} is a preset: RANDOM weights and the built-in character tokenizer, so replies are "
              f"noise. Give a checkpoint folder or a .gguf file for a real model.", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net, tok = load_for_inference(model, device=device)
    name = served_model_name or Path(model.rstrip("/")).name
    app = create_app(net, tok, model_name=name, max_batch=max_batch, max_seq_len=max_seq_len, max_queue=max_queue,
                     template=template, reasoning=reasoning, prefix_cache_bytes=prefix_cache_mb << 20,
                     compile=compile)
    print(f"serving {name} on http://{host}:{port} (web chat at /, API at /v1)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    """Run `app` under uvicorn in a daemon thread (port 0 = any free port); yields the base URL, stops on exit.

        with serve_in_thread(create_app(model, tok, model_name="m")) as url:
            openai.OpenAI(base_url=url + "/v1", api_key="none").chat.completions.create(...)
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="r1kit-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise R1kitError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
