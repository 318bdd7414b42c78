"""Request and response models of the OpenAI-compatible API, with DeepSeek's additions (architecture.md 8.4).

Requests are validated strictly (no string-to-number coercion, no NaN/inf) and every limit is a named constant
below; anything out of range becomes a 400 with an OpenAI-style error body (app.py). Unknown top-level fields are
ignored, as vLLM does, so clients that send newer OpenAI fields keep working.

r1kit extensions beside the OpenAI fields: `thinking: {"type": "enabled" | "disabled"}` (DeepSeek's switch) or
`think: true | false` (Ollama's) turn DeepThink on or off; `top_k`, `min_p` and `ignore_eos` (vLLM's names).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---- limits (every one is checked before a request reaches the engine) ------------------------------------------
MAX_TOKENS_LIMIT = 32_768  # the most new tokens one request may ask for (R1's evaluation setting, 7.3)
MAX_N = 8  # choices per request (each takes an engine slot; never more than max_batch either)
MAX_MESSAGES = 1_024  # messages per chat request
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 256  # characters per stop string
MAX_SEED = 2**62  # seeds in [0, MAX_SEED]; sample j of a request uses seed + j
MAX_BODY_BYTES = 2 * 1024 * 1024  # request bodies above this get 413 before any parsing
MAX_PROMPTS = 16  # prompts in one /v1/completions request

DEFAULT_TEMPERATURE = 0.6  # DeepSeek's recommendation for R1 (0.5-0.7)
DEFAULT_TOP_P = 0.95  # R1's evaluation setting


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # "developer" is OpenAI's new name for system
    content: str | Annotated[list[TextPart], Field(max_length=256)] | None = None
    name: str | None = None
    # DeepSeek answers 400 when a request carries earlier reasoning back (8.4); declared so app.py can refuse it.
    reasoning_content: Any = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ThinkingConfig(_Strict):
    type: Literal["enabled", "disabled"]


class StreamOptions(_Strict):
    include_usage: bool = False


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
    logprobs: bool | None = None  # only false/absent: DeepSeek's reasoner answers an error for logprobs (9.14)
    top_logprobs: int | None = None

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


# ---- responses (non-streaming; stream chunks are built as plain dicts in app.py for speed) ----------------------

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


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r1kit"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
