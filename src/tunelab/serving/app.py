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
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import ConfigError
from tunelab.serving.engine import Engine, Event, Result
from tunelab.serving.metrics import Metrics
from tunelab.serving.responses import (
    Call,
    error_payload,
    error_response,
    sse,
    too_large,
    usage_of,
    validation_error,
)
from tunelab.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    InvalidRequest,
    NotFound,
    ServingError,
    Unauthorized,
    error_body,
)
from tunelab.serving.store import InvalidFeedback, UnknownCompletion

__all__ = ["check_auth_rule", "create_app", "is_loopback", "load_api_keys"]

logger = logging.getLogger("tunelab.serving")

MAX_BODY_BYTES = 4 * 1024 * 1024


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


# ---- the app ------------------------------------------------------------------------------


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
                await too_large(size, self.max_body)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.count(route, status)


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
        return JSONResponse(error_payload(exc), status_code=500)

    async def complete(self, req: ChatCompletionRequest | CompletionRequest) -> Response:
        """Answer a completion request; every error becomes an OpenAI error response."""
        try:
            self.check_model(req.model)
            call = Call.of(req, self.model_name)
            newer = isinstance(req, ChatCompletionRequest) and req.max_completion_tokens
            self.engine.check(call.params, param="max_completion_tokens" if newer else "max_tokens")
            if isinstance(req, ChatCompletionRequest):
                job = partial(self.engine.chat, call.prompt, call.params)
            else:
                job = partial(self.engine.complete, call.prompt, call.params)
            return await self._answer(call, job, req.stream)
        except ServingError as exc:
            return error_response(exc)
        except Exception as exc:
            return self.failure(exc)

    async def _answer(self, call: Call, job: Callable[..., Result], stream: bool) -> Response:
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
        call: Call,
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
                yield sse(error_payload(exc))
                return
            if call.include_usage:
                yield call.usage_chunk(usage_of(result))
            await self._finished(call, result, start)  # logged before [DONE]: rateable at once
            yield sse("[DONE]")
        finally:
            cancel.set()  # the client may have gone: stop decoding for it
            future.cancel()

    async def _finished(self, call: Call, result: Result, start: float) -> None:
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
            "usage": usage_of(result).model_dump(),
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
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

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
