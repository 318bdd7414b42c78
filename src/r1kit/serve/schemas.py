"""The protocol: request and response models of the OpenAI-compatible API, with DeepSeek's additions.

Requests are validated strictly (no string-to-number coercion, no NaN/inf) and every limit is a named constant
below; anything out of range becomes a 400 with an OpenAI-style error body (app.py). Unknown top-level fields are
ignored, as vLLM does, so clients that send newer OpenAI fields keep working. Every response body and every SSE
chunk the server sends is one of the response models below, serialised by pydantic, so what is declared here (and
published in /openapi.json) is what goes on the wire.

r1kit extensions beside the OpenAI fields: `thinking: {"type": "enabled" | "disabled"}` (DeepSeek's switch) or
`think: true | false` (Ollama's) turn DeepThink on or off; `top_k`, `min_p` and `ignore_eos` (vLLM's names).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# ---- limits (every one is checked before a request reaches the engine) ------------------------------------------
MAX_TOKENS_LIMIT = 32_768  # the most new tokens one request may ask for (R1's evaluation setting, 7.3)
MAX_N = 8  # choices per request (each takes an engine slot; never more than max_batch either)
MAX_MESSAGES = 1_024  # messages per chat request
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 256  # characters per stop string
MAX_SEED = 2**62  # seeds in [0, MAX_SEED]; sample j of a request uses seed + j
MAX_BODY_BYTES = 2 * 1024 * 1024  # request bodies above this get 413 before any parsing
MAX_PROMPTS = 16  # prompts in one /v1/completions request
MAX_TOOLS = 128  # tools per request (OpenAI's limit), and tool calls per assistant message
MAX_TOOL_NAME = 64  # characters of a function name (OpenAI's limit)

DEFAULT_TEMPERATURE = 0.6  # DeepSeek's recommendation for R1 (0.5-0.7)
DEFAULT_TOP_P = 0.95  # R1's evaluation setting


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=MAX_TOOL_NAME)
    arguments: str  # a JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]  # "developer" is OpenAI's name for system
    content: str | Annotated[list[TextPart], Field(max_length=256)] | None = None
    name: str | None = None
    # DeepSeek answers 400 when a request carries earlier reasoning back; declared so the server can refuse it.
    reasoning_content: Any = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None  # assistant turns
    tool_call_id: str | None = None  # tool turns
    prefix: bool = False  # DeepSeek's chat prefix completion: the last assistant message is continued

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ThinkingConfig(_Strict):
    type: Literal["enabled", "disabled"]


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=MAX_TOOL_NAME, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema, shown to the model as is
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")  # json_schema carries more fields; any type but "text" is refused
    type: Literal["text", "json_object", "json_schema"]


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class _Sampling(_Strict):
    """Fields shared by both endpoints."""
    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=1_000_000)  # -1 or 0 = off (vLLM uses -1)
    min_p: float | None = Field(None, ge=0, lt=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    ignore_eos: bool = False
    # accepted and ignored, as DeepSeek's reasoner does (8.4); the engine has no repetition penalties
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)  # OpenAI's newer name
    thinking: ThinkingConfig | None = None
    think: bool | None = None
    logprobs: bool | None = None  # only false/absent: DeepSeek's reasoner answers an error for logprobs
    top_logprobs: int | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; the R1 format allows several calls in one turn anyway
    response_format: ResponseFormat | None = None

    def thinking_enabled(self) -> bool:
        """DeepThink: on unless `thinking.type == "disabled"` or `think == false`."""
        if self.thinking is not None:
            return self.thinking.type == "enabled"
        return self.think is not False


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] \
        | Annotated[list[int], Field(min_length=1)]
    logprobs: int | None = None  # not supported: refused unless null
    echo: bool = False  # not supported: refused when true
    best_of: int | None = None  # not supported: refused above 1
    suffix: str | None = None  # not supported: refused unless null


# ---- responses and stream chunks --------------------------------------------------------------------------------

class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    """OpenAI usage plus DeepSeek's cache fields: prompt_tokens = hit + miss; reasoning_tokens <= completion_tokens."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    """One whole tool call in a stream chunk (OpenAI's clients also accept it in pieces; r1kit sends it once its
    `<｜tool▁call▁end｜>` has arrived)."""
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    """A chunk's delta. Only the fields that were given are sent: the first chunk is {"role", "content": ""},
    reasoning chunks carry "content": null beside reasoning_content (DeepSeek's shape), the finish chunk is {}."""
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _only_given(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class _UsageWhenGiven(BaseModel):
    """OpenAI sends "usage" in a streamed response only in its last chunk (stream_options.include_usage)."""
    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _usage_when_given(self, handler):
        out = handler(self)
        if "usage" not in self.model_fields_set:
            out.pop("usage", None)
        return out


class ChatCompletionChunk(_UsageWhenGiven):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(_UsageWhenGiven):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r1kit"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "engine stopped"]
    model: str
    running: int  # samples decoding now
    waiting: int  # samples queued for a slot
    in_flight: int  # samples admitted (running + waiting + not yet seen by the engine)
    capacity: int
    steps: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
