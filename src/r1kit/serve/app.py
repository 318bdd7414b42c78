"""The routes of the OpenAI-compatible server, with DeepSeek-R1's reasoning split.

    r1kit serve ckpt/ --port 8000         # in Python: create_app(model, tokenizer) + serve_in_thread(app)
    curl localhost:8000/v1/chat/completions -d '{"model": "ckpt", "messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: POST /v1/chat/completions (SSE with "stream": true), POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus), GET / (the web chat, static/index.html) and /static/* (its scripts, fonts, favicon).

The pieces: schemas.py (the protocol: every request, response and SSE chunk), server.py (prompt building, sampling,
admission, the token stream of a request), worker.py (the thread that owns the engine), middleware.py (access log,
Host allow-list, API key, body limits), tools.py (function calling), reasoning.py (the <think> split), serve.py
(`r1kit serve` and serve_in_thread).

The response carries DeepSeek's `message.reasoning_content` / `delta.reasoning_content` and its usage fields:
prompt_cache_hit_tokens from the engine's real prefix cache (whole 64-token blocks), prompt_cache_miss_tokens,
completion_tokens_details.reasoning_tokens. As DeepSeek's API does, `reasoning_content` inside request messages and
`logprobs` are refused with 400. Unlike DeepSeek's reasoner, temperature/top_p are honoured (this server also
samples for evaluation).

Failure modes: every bad request is a 4xx with an OpenAI error body {"error": {"message", "type", "param", "code"}};
more requests than max_batch + max_queue in flight -> 429; a client that disconnects has its request aborted and its
slot freed; a streaming request that waits longer than KEEPALIVE_S for a token gets an SSE comment `: keep-alive`.
Rendering and tokenizing a prompt run in a worker thread, so a 2 MB prompt does not stall other streams.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1kit.engine.engine import Engine
from r1kit.serve.errors import APIError, error_response
from r1kit.serve.metrics import Metrics, RequestRecord
from r1kit.serve.middleware import AccessLog, APIKey, BodyLimit, HostCheck
from r1kit.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    StreamOptions,
    TextPart,
    ThinkingConfig,
    ToolCall,
    ToolCallDelta,
)
from r1kit.serve.server import DEFAULT_MAX_QUEUE, Server
from r1kit.serve.worker import Job
from r1kit.tokenizer import Tokenizer

log = logging.getLogger("r1kit.serve")
STATIC = Path(__file__).parent / "static"
DEFAULT_BODY_TIMEOUT_S = 30.0  # a request body must arrive within this long (slowloris bodies are cut off)
_FIELD_NAMES = {name for m in (ChatCompletionRequest, CompletionRequest, ChatMessage, TextPart, ThinkingConfig,
                               StreamOptions) for name in m.model_fields}
_ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           429: {"model": ErrorResponse}}


def create_app(model, tokenizer: Tokenizer, *, model_name: str = "r1kit", max_batch: int = 16,
               max_seq_len: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE, template: str | None = None,
               reasoning: bool = True, prefix_cache_bytes: int = 1 << 30, compile: bool = False,
               api_key: str | None = None, allowed_hosts: tuple[str, ...] = (), log_prompts: bool = False,
               body_timeout: float = DEFAULT_BODY_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving `model` (a Transformer, or anything with its interface) under `model_name`.

    The engine worker thread starts and stops with the app (lifespan), so run it under uvicorn or enter
    `TestClient(app)` as a context manager. `app.state.server` is the `Server` (`server.worker.stats()` has live
    counts) and `app.state.metrics` the `Metrics`.
    """
    engine = Engine(model, tokenizer, max_batch=max_batch, max_seq_len=max_seq_len,
                    prefix_cache_bytes=prefix_cache_bytes, compile=compile)
    srv = Server(engine, tokenizer, model_name, max_queue, template or tokenizer.template, reasoning)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app):
        srv.worker.start(asyncio.get_running_loop())
        yield
        srv.worker.stop()

    app = FastAPI(title="r1kit", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API with DeepSeek's reasoning_content")
    app.state.server, app.state.metrics = srv, metrics
    # added innermost first: a request meets AccessLog, HostCheck, APIKey, BodyLimit, then the routes
    app.add_middleware(BodyLimit, timeout=body_timeout)
    app.add_middleware(APIKey, api_key=api_key)
    app.add_middleware(HostCheck, allowed_hosts=tuple(allowed_hosts))
    app.add_middleware(AccessLog, metrics=metrics, log_prompts=log_prompts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return e.response()

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

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/health", response_model=Health)
    async def health():
        s = srv.worker.stats()
        body = Health(status="ok" if s.alive else "engine stopped", model=srv.model_name, running=s.running,
                      waiting=s.waiting, in_flight=srv.active, capacity=srv.capacity, steps=s.steps)
        return JSONResponse(body.model_dump(), status_code=200 if s.alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        s = srv.worker.stats()
        return PlainTextResponse(metrics.exposition(s.running, s.waiting, srv.active),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=srv.model_name, created=srv.created, max_model_len=srv.max_seq)])

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        rec: RequestRecord = request.state.record
        rec.id = f"chatcmpl-{uuid.uuid4().hex}"
        srv.check_model(req.model)
        plan = await asyncio.to_thread(srv.chat_prompt, req)  # rendering + tokenizing: CPU work off the loop
        rec.prompt, rec.prompt_tokens = plan.last_user, len(plan.ids)
        params = srv.sampling(req, len(plan.ids), engine_stops=not srv.reasoning)
        choices = srv.chat_choices(req.n, req.stop_list(), plan)
        job = srv.submit(plan.ids, params, req.n)
        meta = dict(id=rec.id, created=int(time.time()), model=srv.model_name, system_fingerprint=srv.fingerprint)
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return SSEResponse(_chat_stream(srv, job, choices, meta, usage, rec))
        await _collect(srv, request, [job], [choices])
        _record(srv, rec, [job], [choices])
        out = []
        for i, ch in enumerate(choices):
            reasoning, content = ch.result_text()
            calls = [ToolCall(id=c["id"], function=c["function"]) for c in ch.tool_calls] or None
            out.append(ChatChoice(index=i, message=AssistantMessage(content=content, reasoning_content=reasoning,
                                                                    tool_calls=calls),
                                  finish_reason=ch.finish_reason or "stop"))
        body = ChatCompletion(**meta, choices=out, usage=srv.usage([job], [choices]))
        return JSONResponse(body.model_dump())

    @app.post("/v1/completions", response_model=Completion, responses=_ERRORS)
    async def completions(req: CompletionRequest, request: Request):
        rec: RequestRecord = request.state.record
        rec.id = f"cmpl-{uuid.uuid4().hex}"
        srv.check_model(req.model)
        prompts = await asyncio.to_thread(srv.completion_prompts, req)
        rec.prompt_tokens = sum(map(len, prompts))
        if len(prompts) > 1 and req.stream:
            raise APIError(400, "streaming takes one prompt", param="prompt")
        params = [srv.sampling(req, len(p)) for p in prompts]
        meta = dict(id=rec.id, created=int(time.time()), model=srv.model_name, system_fingerprint=srv.fingerprint)
        if req.stream:
            job = srv.submit(prompts[0], params[0], req.n)
            choices = srv.completion_choices(req.n, list(params[0].stop))
            usage = req.stream_options is not None and req.stream_options.include_usage
            return SSEResponse(_completion_stream(srv, job, choices, meta, usage, rec))
        jobs, all_choices = [], []
        try:
            for p, sp in zip(prompts, params):
                jobs.append(srv.submit(p, sp, req.n))
                all_choices.append(srv.completion_choices(req.n, list(sp.stop)))
        except APIError:
            for job in jobs:
                srv.release(job)
            raise
        await _collect(srv, request, jobs, all_choices)
        _record(srv, rec, jobs, all_choices)
        out = [CompletionChoice(index=k * req.n + i, text=ch.result_text()[1] or "",
                                finish_reason=ch.finish_reason or "stop")
               for k, choices in enumerate(all_choices) for i, ch in enumerate(choices)]
        usage = srv.usage(jobs, all_choices)
        usage.completion_tokens_details.reasoning_tokens = 0
        return JSONResponse(Completion(**meta, choices=out, usage=usage).model_dump())

    return app


async def _collect(srv: Server, request: Request, jobs: list[Job], choices: list[list]) -> None:
    """Run non-streaming jobs to the end; a client that disconnects meanwhile has them aborted."""
    watcher = asyncio.create_task(_watch_disconnect(request, jobs))
    try:
        for job, chs in zip(jobs, choices):
            async for _ in srv.updates(job, chs):
                pass
            if job.open:  # disconnected
                break
    finally:
        watcher.cancel()
        for job in jobs:
            srv.release(job)


def _record(srv: Server, rec: RequestRecord, jobs: list[Job], choices: list[list]) -> None:
    u = srv.usage(jobs, choices)
    rec.prompt_tokens, rec.cached_tokens, rec.completion_tokens = \
        u.prompt_tokens, u.prompt_cache_hit_tokens, u.completion_tokens
    rec.first_token_at = min((j.first_token_at for j in jobs if j.first_token_at is not None), default=None)


async def _watch_disconnect(request: Request, jobs: list[Job]) -> None:
    """For non-streaming requests: wake the handler when the client goes away, so it aborts the request."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.queue.put_nowait("disconnected")


# ---------------------------------------------------------------------------------------------------------------------
# SSE


def _sse(model) -> str:
    return f"data: {model.model_dump_json()}\n\n"


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


def _chat_stream(srv: Server, job: Job, choices: list, meta: dict, include_usage: bool, rec: RequestRecord):
    """SSE chunks: a role chunk per choice, then reasoning_content deltas, content deltas, tool-call deltas, a
    finish chunk."""

    def chunk(index: int, delta: Delta, finish: str | None = None) -> str:
        return _sse(ChatCompletionChunk(**meta, choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)]))

    async def chunks():
        for i in range(len(choices)):
            yield chunk(i, Delta(role="assistant", content=""))
        async for up in srv.updates(job, choices, keepalive=True):
            if up is None:
                yield ": keep-alive\n\n"
                continue
            index, r, c, calls, finish = up
            out = []
            if r:
                out.append(chunk(index, Delta(content=None, reasoning_content=r)))
            if c:
                out.append(chunk(index, Delta(content=c, reasoning_content=None)))
            if calls:
                out.append(chunk(index, Delta(tool_calls=[
                    ToolCallDelta(index=k["index"], id=k["id"], function=k["function"]) for k in calls])))
            if finish:
                out.append(chunk(index, Delta(), finish))
            yield "".join(out)

    return _stream(srv, job, choices, ChatCompletionChunk(**meta, choices=[]), include_usage, chunks(), rec)


def _completion_stream(srv: Server, job: Job, choices: list, meta: dict, include_usage: bool, rec: RequestRecord):
    async def chunks():
        async for up in srv.updates(job, choices, keepalive=True):
            if up is None:
                yield ": keep-alive\n\n"
                continue
            index, _, c, _, finish = up
            yield _sse(Completion(**meta, choices=[CompletionChoice(index=index, text=c, finish_reason=finish)]))

    return _stream(srv, job, choices, Completion(**meta, choices=[]), include_usage, chunks(), rec)


async def _stream(srv: Server, job: Job, choices: list, empty, include_usage: bool, chunks, rec: RequestRecord):
    """The part both SSE streams share: the chunks, an API error as an error event, the usage chunk, [DONE]; the
    job's slots are released however the stream ends (a client that disconnects included)."""
    try:
        try:
            async for s in chunks:
                yield s
        except APIError as e:
            yield _sse(e.body())
            return
        if include_usage:
            empty.usage = srv.usage([job], [choices])
            yield _sse(empty)
        yield "data: [DONE]\n\n"
    finally:
        await chunks.aclose()
        srv.release(job)
        _record(srv, rec, [job], [choices])
