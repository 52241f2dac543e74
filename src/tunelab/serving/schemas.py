"""The OpenAI API shapes tunelab serves, and the typed errors that become its error bodies.

Requests follow the OpenAI reference for ``/v1/chat/completions`` and ``/v1/completions``:
fields tunelab does not know (``logit_bias``, ``tools``, ``response_format``...) are
ignored as OpenAI ignores unknown fields, but a known field with an invalid value is a 400
(``invalid_request_error``). One extension, as in vLLM: ``repetition_penalty`` (1.0: off).
Responses are the OpenAI shapes; a classification model adds ``choices[i].tunelab``
(``label_probs``, ``temperature``).

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``
(:func:`error_body`); library code raises :class:`ServingError` subclasses carrying the HTTP
status, and the app turns them into that body.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from tunelab.errors import TunelabError

__all__ = [
    "MAX_CHOICES",
    "AssistantMessage",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChoiceLogprobs",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "Delta",
    "FeedbackRequest",
    "FinishReason",
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "ServingError",
    "StreamOptions",
    "TokenLogprob",
    "TopLogprob",
    "Unauthorized",
    "Usage",
    "completion_logprobs",
    "error_body",
]

MAX_CHOICES = 16  # ``n`` above this is a 400: every choice is decoded on the one worker
MAX_STOP = 4  # stop sequences per request (the OpenAI limit)


class ServingError(TunelabError):
    """An error the API reports to its client: HTTP ``status`` and OpenAI ``type``/``code``.

    ``param`` names the request field at fault (``None`` when no single field is).
    """

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code, self.param = code, param


class InvalidRequest(ServingError):
    """400: a value is out of range, a limit is exceeded, a feature is not supported."""

    status = 400
    type = "invalid_request_error"


class Unauthorized(ServingError):
    """401: no ``Authorization: Bearer`` header, or a key the server does not know."""

    status = 401
    type = "invalid_request_error"


class NotFound(ServingError):
    """404: an unknown model name, an unknown completion id, or feedback while it is off."""

    status = 404
    type = "invalid_request_error"


class Overloaded(ServingError):
    """503: the request queue is full; retry after a moment."""

    status = 503
    type = "server_error"


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    """One part of a message whose content is a list (only text parts are supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One chat message. ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="Who speaks; tool and function messages are not supported."
    )
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined without separators)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, str]:
        """``{"role", "content"}`` as chat templates take it."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}

    @model_validator(mode="after")
    def _content_needed(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a last chunk with the usage.")


class _Sampling(_Request):
    """What both completion endpoints share."""

    model: str = Field(description="The served model's name, or 'default'.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices to return.")
    stop: str | list[str] | None = Field(None, description="Up to 4 stop sequences.")
    seed: int | None = Field(None, description="Same seed and parameters: same sampled text.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # bounded below: scores / 1e-40 overflow to inf and sampling fails (API fuzzing found it)
    repetition_penalty: float = Field(
        1.0, ge=0.01, le=3.0, description="Extension; 1.0: off, below 1 favours repeats."
    )
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated name of the next one.")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (legacy). One prompt per request."""

    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"one prompt per request is supported, got {len(value)}")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class FeedbackRequest(_Request):
    """``POST /v1/feedback``: a rating of one choice of a logged completion."""

    id: str = Field(min_length=1, description="The completion's id as the API returned it.")
    rating: Literal["up", "down"] | StrictInt = Field(description="'up' / 'down', or 1..5.")
    choice: int = Field(0, ge=0)
    correction: str | None = Field(None, description="What the answer should have been.")
    comment: str | None = None

    @field_validator("rating")
    @classmethod
    def _stars(cls, value: str | int) -> str | int:
        if isinstance(value, int) and not 1 <= value <= 5:
            raise ValueError(f"an integer rating is 1..5, got {value}")
        return value


# ---- responses ---------------------------------------------------------------------------


class TopLogprob(BaseModel):
    """One candidate token at a position: its text, log-probability and UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """The chosen token at a position and the most likely alternatives there."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """``choices[i].logprobs`` of a chat completion."""

    content: list[TokenLogprob] | None


class CompletionLogprobs(BaseModel):
    """``choices[i].logprobs`` of a legacy completion (parallel lists)."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=lambda v: v is None)
    content: str | None = Field(None, exclude_if=lambda v: v is None)


FinishReason = Literal["stop", "length"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason
    tunelab: dict[str, Any] | None = Field(None, exclude_if=lambda v: v is None)


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    tunelab: dict[str, Any] | None = Field(None, exclude_if=lambda v: v is None)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class _Response(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Completion(_Response):
    """A legacy completion, and (with ``finish_reason`` None until the end) its stream chunks."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


def completion_logprobs(tokens: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    """The legacy layout of the same numbers; ``text_offset`` counts characters of the
    generated text (starting at ``offset``)."""
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{a.token: a.logprob for a in t.top_logprobs} for t in tokens],
        text_offset=offsets,
    )
