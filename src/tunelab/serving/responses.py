"""OpenAI response bodies: whole responses, server-sent-event chunks and error bodies.

- :class:`Call`: one completion request as the app follows it (its id, the sampling
  parameters, what the store logs) and the bodies it answers with: :meth:`Call.response`
  for a whole response, :meth:`Call.chunks` and :meth:`Call.usage_chunk` for a stream;
- :func:`sse`: one ``data: ...`` event of a stream;
- :func:`error_payload`, :func:`error_response`, :func:`too_large` and
  :func:`validation_error`: OpenAI error bodies (:func:`~tunelab.serving.schemas.error_body`)
  for typed errors, unexpected exceptions, a body over the size limit (413) and FastAPI's
  validation errors (400 instead of 422).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tunelab.serving.decoding import SamplingParams
from tunelab.serving.engine import Event, Result, Started
from tunelab.serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    InvalidRequest,
    ServingError,
    Usage,
    completion_logprobs,
    error_body,
)

__all__ = [
    "Call",
    "error_payload",
    "error_response",
    "sse",
    "too_large",
    "usage_of",
    "validation_error",
]


def error_payload(exc: Exception) -> dict[str, Any]:
    """The OpenAI error body of ``exc``: a typed error as it is (its hint in brackets),
    anything else as an ``internal_error`` that names only the exception type."""
    if isinstance(exc, ServingError):
        message = f"{exc.args[0]} ({exc.hint})" if exc.hint else str(exc.args[0])
        return error_body(message, type=exc.type, code=exc.code, param=exc.param)
    return error_body(
        f"internal error ({type(exc).__name__}); the server logged it",
        type="server_error",
        code="internal_error",
    )


def error_response(exc: ServingError) -> JSONResponse:
    """``exc`` answered with its status (a 503 asks the client to retry after 1 s)."""
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(error_payload(exc), status_code=exc.status, headers=headers)


def sse(data: Any) -> str:
    """One server-sent event: ``data: <JSON or the string>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def usage_of(result: Result) -> Usage:
    """The OpenAI ``usage`` block of a finished request."""
    done = result.completion_tokens
    return Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=done,
        total_tokens=result.prompt_tokens + done,
    )


def _extension(probs: dict[str, float] | None, temperature: float | None) -> dict[str, Any] | None:
    return None if probs is None else {"label_probs": probs, "temperature": temperature}


def _sampling(req: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    if isinstance(req, ChatCompletionRequest):
        max_tokens, logprobs, top = req.token_budget(), req.logprobs, req.top_logprobs or 0
    else:
        max_tokens, logprobs, top = req.max_tokens, req.logprobs is not None, req.logprobs or 0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        n=req.n,
        stop=tuple(req.stops()),
        seed=req.seed,
        logprobs=logprobs,
        top_logprobs=top,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        repetition_penalty=req.repetition_penalty,
    )


@dataclass(frozen=True)
class Call:
    """One completion request as the app follows it: its id, what to log, how to answer."""

    endpoint: str  # "chat" | "completion" (the store's names)
    id: str
    started: float  # unix time the request arrived
    model: str
    prompt: Any  # chat: the messages; completion: the prompt text
    params: SamplingParams
    include_usage: bool

    @classmethod
    def of(cls, req: ChatCompletionRequest | CompletionRequest, model: str) -> Call:
        prompt: Any
        if isinstance(req, ChatCompletionRequest):
            endpoint, prefix, prompt = "chat", "chatcmpl", [m.as_dict() for m in req.messages]
        else:
            endpoint, prefix, prompt = "completion", "cmpl", req.prompt_text()
        rid = f"{prefix}-{uuid.uuid4().hex}"
        return cls(endpoint, rid, time.time(), model, prompt, _sampling(req), req.include_usage())

    @property
    def created(self) -> int:
        return int(self.started)

    def logged_params(self) -> dict[str, Any]:
        p = self.params
        return {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "stop": list(p.stop),
            "n": p.n,
            "seed": p.seed,
        }

    def response(self, result: Result) -> dict[str, Any]:
        """The whole (non-streamed) response body."""
        head = {"id": self.id, "created": self.created, "model": self.model}
        lp = self.params.logprobs
        if self.endpoint == "chat":
            ext = _extension(result.label_probs, result.temperature)
            chat = [
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=c.text),
                    logprobs=ChoiceLogprobs(content=c.logprobs) if lp else None,
                    finish_reason=c.finish_reason,
                    tunelab=ext,
                )
                for i, c in enumerate(result.choices)
            ]
            return ChatCompletion(**head, choices=chat, usage=usage_of(result)).model_dump()
        legacy = [
            CompletionChoice(
                index=i,
                text=c.text,
                finish_reason=c.finish_reason,
                logprobs=completion_logprobs(c.logprobs or []) if lp else None,
            )
            for i, c in enumerate(result.choices)
        ]
        return Completion(**head, choices=legacy, usage=usage_of(result)).model_dump()

    def chunks(self, event: Event, sent: dict[int, str]) -> list[str]:
        """The SSE chunks of one engine event (``sent``: text so far per choice)."""
        head = {"id": self.id, "created": self.created, "model": self.model}
        lp = self.params.logprobs
        if self.endpoint == "chat":
            if isinstance(event, Started):  # the role, and label probabilities if any
                ext = _extension(event.label_probs, event.temperature)
                delta = Delta(role="assistant", content="")
                first = [
                    ChatChunkChoice(index=i, delta=delta, tunelab=ext) for i in range(self.params.n)
                ]
                return [sse(ChatCompletionChunk(**head, choices=[c]).model_dump()) for c in first]
            choice = ChatChunkChoice(
                index=event.index,
                delta=Delta(content=event.text or None),
                logprobs=ChoiceLogprobs(content=event.logprobs) if lp else None,
                finish_reason=event.finish_reason,
            )
            return [sse(ChatCompletionChunk(**head, choices=[choice]).model_dump())]
        if isinstance(event, Started):
            return []
        before = sent.get(event.index, "")
        sent[event.index] = before + event.text
        legacy = CompletionChoice(
            index=event.index,
            text=event.text,
            logprobs=completion_logprobs(event.logprobs or [], len(before)) if lp else None,
            finish_reason=event.finish_reason,
        )
        return [sse(Completion(**head, choices=[legacy]).model_dump())]

    def usage_chunk(self, usage: Usage) -> str:
        """The last chunk of a stream with ``stream_options.include_usage`` (no choices)."""
        cls = ChatCompletionChunk if self.endpoint == "chat" else Completion
        head = {"id": self.id, "created": self.created, "model": self.model}
        return sse(cls(**head, choices=[], usage=usage).model_dump())


def too_large(size: int, limit: int) -> JSONResponse:
    exc = InvalidRequest(
        f"the request body is {size} bytes; this server takes at most {limit}",
        code="request_too_large",
    )
    return JSONResponse(error_body(str(exc), type=exc.type, code=exc.code), status_code=413)


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as OpenAI's 400: every problem in the message, the first in ``param``."""
    problems, params = [], []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error')})")
            params.append("")
            continue
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        params.append(loc)
        problems.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    body = error_body(
        "invalid request: " + "; ".join(problems),
        type="invalid_request_error",
        code="invalid_value",
        param=params[0] if params and params[0] else None,
    )
    return JSONResponse(body, status_code=400)
