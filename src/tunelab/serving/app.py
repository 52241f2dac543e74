"""The OpenAI-compatible HTTP API: :func:`create_app` builds it around an :class:`Engine`.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (both stream as server-sent events with ``"stream": true``),
``POST /v1/feedback``, ``GET /health`` (never needs a key) and ``GET /metrics`` (JSON;
needs a key like the API when keys are set: it tells traffic volumes to whoever asks).

Every error is an OpenAI error body (:func:`~tunelab.serving.schemas.error_body`): 400
invalid request (validation errors included), 401 bad or missing key, 404 unknown model or
completion, 413 a body over ``max_body_bytes``, 503 queue full, 500 anything unexpected —
logged with its traceback and counted, and the server goes on.

Auth: ``Authorization: Bearer <key>``, compared with :func:`hmac.compare_digest` against
every configured key (no early exit). Keys are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import ConfigError
from tunelab.serving.engine import Engine, Event, Result, SamplingParams, Started
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
    FeedbackRequest,
    InvalidRequest,
    NotFound,
    ServingError,
    Unauthorized,
    Usage,
    completion_logprobs,
    error_body,
)
from tunelab.serving.store import InvalidFeedback, UnknownCompletion

__all__ = ["Metrics", "check_auth_rule", "create_app", "is_loopback", "load_api_keys"]

logger = logging.getLogger("tunelab.serving")

MAX_BODY_BYTES = 4 * 1024 * 1024
LATENCY_WINDOW = 10_000  # latest completion requests the percentiles are taken over


# ---- auth ---------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1,
    ``localhost``). ``0.0.0.0`` listens on every interface: not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_api_keys(key_file: Path | None, env_value: str | None) -> set[str]:
    """Keys from ``key_file`` (one per line; blank lines and ``#`` comments skipped) and
    from ``env_value`` (the ``TUNELAB_API_KEYS`` variable: comma-separated)."""
    keys: set[str] = set()
    if key_file is not None:
        if not key_file.is_file():
            raise ConfigError(
                f"API key file not found: {key_file}",
                hint="write one key per line, or set TUNELAB_API_KEYS",
            )
        for line in key_file.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                keys.add(line.strip())
    keys.update(k.strip() for k in (env_value or "").split(",") if k.strip())
    return keys


def check_auth_rule(host: str, keys: set[str], no_auth: bool) -> None:
    """Keys are required unless the server binds a loopback address with ``--no-auth``."""
    if no_auth and not is_loopback(host):
        raise ConfigError(
            f"--no-auth is only allowed on a loopback host, not on {host!r}: anyone who can "
            "reach that address could use the model",
            hint="bind --host 127.0.0.1, or give keys with --api-key-file / TUNELAB_API_KEYS",
        )
    if not no_auth and not keys:
        where = "" if is_loopback(host) else f" on {host!r}"
        raise ConfigError(
            f"no API keys: the server needs at least one to serve{where}",
            hint="pass --api-key-file FILE (one key per line) or set TUNELAB_API_KEYS=k1,k2"
            + ("; on 127.0.0.1 --no-auth turns auth off" if is_loopback(host) else ""),
        )


def _auth(keys: set[str] | None) -> Callable[[Request], Awaitable[None]]:
    encoded = [k.encode() for k in keys or ()]

    async def check(request: Request) -> None:
        if not encoded:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized(
                "no API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        ok = False
        for key in encoded:  # every key, so the time does not tell which one nearly matched
            ok |= hmac.compare_digest(key, given.strip().encode())
        if not ok:
            raise Unauthorized("incorrect API key", code="invalid_api_key")

    return check


# ---- metrics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least q% of values at or below)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Metrics:
    """Request counts by route and status, failures, and completion latencies.

    Updated on the event loop thread only.
    """

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[str, Counter[int]] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.unexpected = 0  # 500s: exceptions the endpoints did not expect
        self.stream_errors = 0  # failures after a stream had started (sent as an error event)
        self.log_failures = 0  # completions the store could not record

    def count(self, route: str, status: int) -> None:
        self.requests.setdefault(route, Counter())[status] += 1

    def snapshot(self, engine: Engine) -> dict[str, Any]:
        stats = engine.stats()
        by_status: Counter[int] = Counter()
        for counts in self.requests.values():
            by_status.update(counts)
        lat = list(self.latencies)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": {
                r: {str(s): n for s, n in sorted(c.items())}
                for r, c in sorted(self.requests.items())
            },
            "requests_total": sum(by_status.values()),
            "errors": {
                "client": sum(n for s, n in by_status.items() if 400 <= s < 500),
                "server": sum(n for s, n in by_status.items() if s >= 500),
                "unexpected": self.unexpected,
                "stream": self.stream_errors,
                "log_failures": self.log_failures,
            },
            "latency_ms": {
                "count": len(lat),
                "p50": None if p50 is None else round(p50, 1),
                "p99": None if p99 is None else round(p99, 1),
            },
            "tokens": {"prompt": stats["prompt_tokens"], "completion": stats["completion_tokens"]},
            "tokens_per_second": stats["tokens_per_second"],
            "queue": {
                "depth": stats["queue_depth"],
                "size": stats["queue_size"],
                "rejected": stats["rejected"],
            },
            "engine": {
                "jobs": stats["jobs"],
                "failed": stats["failed"],
                "busy_seconds": stats["busy_seconds"],
            },
        }


class _Count:
    """ASGI middleware: counts every HTTP response by route template and status, and
    answers 413 to a body declared larger than ``max_body``."""

    def __init__(self, app: Any, metrics: Metrics, max_body: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            size = int(dict(scope["headers"]).get(b"content-length", b"0"))
            if size > self.max_body:
                await _too_large(size, self.max_body)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.count(route, status)


def _too_large(size: int, limit: int) -> JSONResponse:
    exc = InvalidRequest(
        f"the request body is {size} bytes; this server takes at most {limit}",
        code="request_too_large",
    )
    return JSONResponse(error_body(str(exc), type=exc.type, code=exc.code), status_code=413)


# ---- requests and their answers -----------------------------------------------------------


def _error_payload(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ServingError):
        message = f"{exc.args[0]} ({exc.hint})" if exc.hint else str(exc.args[0])
        return error_body(message, type=exc.type, code=exc.code, param=exc.param)
    return error_body(
        f"internal error ({type(exc).__name__}); the server logged it",
        type="server_error",
        code="internal_error",
    )


def _error(exc: ServingError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(_error_payload(exc), status_code=exc.status, headers=headers)


def _sse(data: Any) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def _usage(result: Result) -> Usage:
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
class _Call:
    """One completion request as the app follows it: its id, what to log, how to answer."""

    endpoint: str  # "chat" | "completion" (the store's names)
    id: str
    started: float  # unix time the request arrived
    model: str
    prompt: Any  # chat: the messages; completion: the prompt text
    params: SamplingParams
    include_usage: bool

    @classmethod
    def of(cls, req: ChatCompletionRequest | CompletionRequest, model: str) -> _Call:
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
            return ChatCompletion(**head, choices=chat, usage=_usage(result)).model_dump()
        legacy = [
            CompletionChoice(
                index=i,
                text=c.text,
                finish_reason=c.finish_reason,
                logprobs=completion_logprobs(c.logprobs or []) if lp else None,
            )
            for i, c in enumerate(result.choices)
        ]
        return Completion(**head, choices=legacy, usage=_usage(result)).model_dump()

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
                return [_sse(ChatCompletionChunk(**head, choices=[c]).model_dump()) for c in first]
            choice = ChatChunkChoice(
                index=event.index,
                delta=Delta(content=event.text or None),
                logprobs=ChoiceLogprobs(content=event.logprobs) if lp else None,
                finish_reason=event.finish_reason,
            )
            return [_sse(ChatCompletionChunk(**head, choices=[choice]).model_dump())]
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
        return [_sse(Completion(**head, choices=[legacy]).model_dump())]

    def usage_chunk(self, usage: Usage) -> str:
        """The last chunk of a stream with ``stream_options.include_usage`` (no choices)."""
        cls = ChatCompletionChunk if self.endpoint == "chat" else Completion
        head = {"id": self.id, "created": self.created, "model": self.model}
        return _sse(cls(**head, choices=[], usage=usage).model_dump())


class _Sink:
    """Stream events from the worker thread to the event loop (thread-safe hand-over)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def emit(self, event: Event | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def get(self) -> Event | None:
        return await self.queue.get()


class _Service:
    """What the routes do: queue work on the engine, answer, count, log."""

    def __init__(self, engine: Engine, store: Any, metrics: Metrics, model_name: str) -> None:
        self.engine, self.store, self.metrics, self.model_name = engine, store, metrics, model_name

    def check_model(self, name: str) -> None:
        if name not in (self.model_name, "default"):
            raise NotFound(
                f"the model {name!r} is not served here",
                code="model_not_found",
                param="model",
                hint=f"use {self.model_name!r} or 'default'",
            )

    def failure(self, exc: Exception) -> JSONResponse:
        """A 500 for an exception nobody expected: logged with its traceback, counted."""
        self.metrics.unexpected += 1
        logger.error("request failed", exc_info=exc)
        return JSONResponse(_error_payload(exc), status_code=500)

    async def complete(self, req: ChatCompletionRequest | CompletionRequest) -> Response:
        """Answer a completion request; every error becomes an OpenAI error response."""
        try:
            self.check_model(req.model)
            call = _Call.of(req, self.model_name)
            newer = isinstance(req, ChatCompletionRequest) and req.max_completion_tokens
            self.engine.check(call.params, param="max_completion_tokens" if newer else "max_tokens")
            if isinstance(req, ChatCompletionRequest):
                job = partial(self.engine.chat, call.prompt, call.params)
            else:
                job = partial(self.engine.complete, call.prompt, call.params)
            return await self._answer(call, job, req.stream)
        except ServingError as exc:
            return _error(exc)
        except Exception as exc:
            return self.failure(exc)

    async def _answer(self, call: _Call, job: Callable[..., Result], stream: bool) -> Response:
        start = time.perf_counter()
        if not stream:
            result = await asyncio.wrap_future(self.engine.submit(job))
            await self._finished(call, result, start)
            return JSONResponse(call.response(result))
        sink, cancel = _Sink(asyncio.get_running_loop()), threading.Event()
        future = self.engine.submit(partial(job, on_event=sink.emit, cancel=cancel))
        future.add_done_callback(lambda _f: sink.emit(None))
        first = await sink.get()
        if first is None:  # it failed before decoding began (a limit, most likely)
            await asyncio.wrap_future(future)
            raise RuntimeError("the engine finished a stream without starting it")
        body = self._stream(call, first, future, sink, cancel, start)
        return StreamingResponse(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def _stream(
        self,
        call: _Call,
        first: Event,
        future: Future[Result],
        sink: _Sink,
        cancel: threading.Event,
        start: float,
    ) -> AsyncIterator[str]:
        sent: dict[int, str] = {}
        try:
            for chunk in call.chunks(first, sent):
                yield chunk
            while (event := await sink.get()) is not None:
                for chunk in call.chunks(event, sent):
                    yield chunk
            try:
                result = future.result()
            except Exception as exc:  # the headers are out: the error goes in the stream
                self.metrics.stream_errors += 1
                if not isinstance(exc, ServingError):
                    self.metrics.unexpected += 1
                    logger.error("stream %s failed", call.id, exc_info=exc)
                yield _sse(_error_payload(exc))
                return
            if call.include_usage:
                yield call.usage_chunk(_usage(result))
            await self._finished(call, result, start)  # logged before [DONE]: rateable at once
            yield _sse("[DONE]")
        finally:
            cancel.set()  # the client may have gone: stop decoding for it
            future.cancel()

    async def _finished(self, call: _Call, result: Result, start: float) -> None:
        """Count the latency and log the completion (once the answer is complete)."""
        latency = (time.perf_counter() - start) * 1000
        self.metrics.latencies.append(latency)
        if self.store is None:
            return
        row = {
            "id": call.id,
            "model": call.model,
            "endpoint": call.endpoint,
            "prompt": call.prompt,
            "outputs": [c.text for c in result.choices],
            "params": call.logged_params(),
            "usage": _usage(result).model_dump(),
            "created": call.started,
            "latency_ms": latency,
        }
        try:
            await to_thread.run_sync(partial(self.store.log_completion, **row))
        except Exception as exc:  # the client has its answer; a lost log row is counted
            self.metrics.log_failures += 1
            logger.warning("could not log completion %s: %s", call.id, exc)

    async def feedback(self, req: FeedbackRequest) -> Response:
        if self.store is None:
            raise NotFound(
                "feedback is off: this server does not log completions",
                code="feedback_disabled",
                hint="start the server without --no-log",
            )
        add = partial(
            self.store.add_feedback,
            req.id,
            rating=req.rating,
            choice=req.choice,
            correction=req.correction,
            comment=req.comment,
        )
        try:
            row = await to_thread.run_sync(add)
        except UnknownCompletion as exc:
            raise NotFound(exc.args[0], code="completion_not_found", param="id") from None
        except InvalidFeedback as exc:
            raise InvalidRequest(exc.args[0], code="invalid_feedback") from None
        except Exception as exc:
            return self.failure(exc)
        return JSONResponse(row)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
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


# ---- the app ------------------------------------------------------------------------------


def create_app(
    engine: Engine,
    *,
    api_keys: set[str] | None,
    store: Any = None,
    model_name: str,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API around ``engine``. ``api_keys`` None or empty: no auth (the caller enforces
    :func:`check_auth_rule`). ``store``: a :class:`~tunelab.serving.store.FeedbackStore`
    (or anything with ``log_completion`` and ``add_feedback``) that every completion is
    logged into and feedback goes to; None turns logging and ``/v1/feedback`` off."""
    app = FastAPI(title="tunelab", version="1", docs_url=None, redoc_url=None)
    metrics = Metrics()
    service = _Service(engine, store, metrics, model_name)
    app.state.metrics = metrics
    app.add_middleware(_Count, metrics=metrics, max_body=max_body_bytes)
    auth = [Depends(_auth(api_keys))]
    card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "tunelab"}

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        body = error_body(str(exc.detail), type="invalid_request_error", code=code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return service.failure(exc)  # a safety net: the routes catch their own

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "queue_depth": engine.queue_depth()}

    @app.get("/metrics", dependencies=auth)
    async def get_metrics() -> dict[str, Any]:
        return {"model": model_name, **metrics.snapshot(engine)}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def get_model(model_id: str) -> dict[str, Any]:
        service.check_model(model_id)
        return card

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(req: ChatCompletionRequest) -> Response:
        return await service.complete(req)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest) -> Response:
        return await service.complete(req)

    @app.post("/v1/feedback", dependencies=auth)
    async def feedback(req: FeedbackRequest) -> Response:
        return await service.feedback(req)

    return app
