"""Server metrics: request counts by route and status, failures, completion latencies.

:class:`Metrics` is what ``GET /metrics`` reports (:meth:`Metrics.snapshot`), together with
the engine's token and queue counters; :func:`percentile` is the nearest-rank percentile it
(and ``tunelab bench serve``) takes latencies with.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Any

from tunelab.serving.engine import Engine

__all__ = ["LATENCY_WINDOW", "Metrics", "percentile"]

LATENCY_WINDOW = 10_000  # latest completion requests the percentiles are taken over


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
