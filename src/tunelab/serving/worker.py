"""The engine's worker: one thread runs every job in arrival order, behind a bounded queue.

Requests from many clients wait in a ``queue.Queue`` of ``queue_size`` jobs;
:meth:`Worker.submit` raises :class:`~tunelab.serving.schemas.Overloaded` (a 503) at once
when it is full. Running every model and tokenizer call on this one thread means a torch
model is never used by two threads at once, and a fast tokenizer never sees concurrent
calls (they can fail with "Already borrowed").
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from tunelab.serving.schemas import Overloaded

__all__ = ["Worker"]

T = TypeVar("T")


class Worker:
    """A daemon thread that runs queued jobs one at a time.

    ``context`` wraps every job (the engine passes ``torch.inference_mode``);
    ``on_result`` sees every successful result on the worker thread, before the caller.
    """

    def __init__(
        self,
        queue_size: int,
        *,
        context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        on_result: Callable[[Any], None] | None = None,
        name: str = "tunelab-engine",
    ) -> None:
        self.queue_size, self.context, self.on_result = queue_size, context, on_result
        self._queue: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue(
            maxsize=queue_size
        )
        self._lock = threading.Lock()
        self._busy = False
        self._counts = {"jobs": 0, "failed": 0, "rejected": 0}
        self._busy_seconds = 0.0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; its result (or exception) arrives in the Future.

        Raises :class:`Overloaded` at once when ``queue_size`` jobs wait.
        """
        future: Future[T] = Future()
        try:
            self._queue.put_nowait((future, fn))
        except queue.Full:
            with self._lock:
                self._counts["rejected"] += 1
            raise Overloaded(
                f"the server is busy: {self.queue_size} requests are already waiting",
                code="queue_full",
                hint="retry after a moment, or start the server with a larger --queue-size",
            ) from None
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Let the worker finish what is queued, then stop it."""
        self._queue.put(None)
        self._thread.join(timeout)

    def depth(self) -> int:
        """Jobs waiting plus the one running."""
        return self._queue.qsize() + int(self._busy)

    def stats(self) -> dict[str, Any]:
        """Counters since start: ``jobs``, ``failed``, ``rejected``, ``busy_seconds`` (time
        spent running jobs, unrounded), ``queue_depth`` and ``queue_size``."""
        with self._lock:
            out: dict[str, Any] = {**self._counts, "busy_seconds": self._busy_seconds}
        out["queue_depth"] = self.depth()
        out["queue_size"] = self.queue_size
        return out

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue  # the client went away while it waited
            self._busy, start = True, time.perf_counter()
            try:
                with self.context():
                    result = fn()
            except Exception as exc:  # handed to the caller; the worker carries on
                with self._lock:
                    self._counts["failed"] += 1
                future.set_exception(exc)
            else:
                if self.on_result is not None:
                    self.on_result(result)
                future.set_result(result)
            finally:
                with self._lock:
                    self._counts["jobs"] += 1
                    self._busy_seconds += time.perf_counter() - start
                self._busy = False
