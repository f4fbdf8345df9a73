"""Request and response models of the OpenAI-compatible API (pydantic, strict types).

Requests are validated in strict mode: `"max_tokens": "5"` is a type error, not 5. Unknown
OpenAI fields are ignored so that clients sending optional extras keep working; fields whose
value would change the meaning of a request and that the server cannot honour (`n` > 1,
`tools`, `logprobs`) are rejected by the app with a clear message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DECISIONS = ("refuse_steer", "ablate")
LANGUAGE_SOURCES = ("request", "detected", "fallback")


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Request):
    """One part of a multi-part message content; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text (multi-part contents are joined with newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = None
    user: str | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ModerationRequest(_Request):
    input: str | list[str]
    model: str | None = None
    metadata: dict[str, str] | None = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---------------------------------------------------------------- responses


class BabelgateInfo(BaseModel):
    """The gate's verdict on a request (extension field `babelgate`).

    score: gate logit at block L; threshold: the threshold it was compared with
    (score >= threshold fires); decision: "refuse_steer" (fired) or "ablate".
    """

    language: str
    language_source: Literal["request", "detected", "fallback"]
    score: float
    threshold: float
    decision: Literal["refuse_steer", "ablate"]
    threshold_source: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str
    babelgate: BabelgateInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str
    usage: Usage | None = None
    babelgate: BabelgateInfo | None = None


class ModerationResult(BaseModel):
    """OpenAI moderation result with one category, "harmful".

    category_scores["harmful"] = sigmoid(score - threshold), so it is >= 0.5 exactly when
    the gate fires; `score` is the raw gate logit.
    """

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    score: float
    threshold: float
    language: str
    language_source: Literal["request", "detected", "fallback"]
    threshold_source: str


class Moderation(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
