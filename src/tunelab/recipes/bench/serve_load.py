"""A load test of a running ``tunelab serve``: many clients, bounded requests, real HTTP.

:func:`run_load` starts ``clients`` threads that share ``requests`` chat completions
(sampled at temperature 0.7, one seed per request, a few short prompts in turn), each
thread with its own HTTP connection, and measures from the client side:

- throughput: requests/s and completion tokens/s over the wall time of the whole run;
- latency of each request (send to last byte), p50 / p99 / mean / max in ms;
- status counts (every non-200 is kept, the first few error bodies too);
- with ``db`` (the server's feedback store): every 4th completion gets a feedback POST, and
  the store is read afterwards to count how many of those rows arrived.

It only talks to loopback URLs (127.0.0.0/8, ::1, localhost): it is a bench for this
machine, not a tool to load someone else's server.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunelab.errors import ConfigError
from tunelab.serving.app import is_loopback
from tunelab.serving.metrics import percentile

__all__ = ["PROMPTS", "run_load"]

PROMPTS = [
    "Is this review positive or negative? 'A moving, beautifully acted film.'",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Give me two words that rhyme with 'light'.",
]
FEEDBACK_EVERY = 4  # one feedback POST per this many completions (with a db)


def _check_loopback(base_url: str) -> str:
    host = urlsplit(base_url).hostname or ""
    if not is_loopback(host):
        raise ConfigError(
            f"the load test only talks to loopback addresses (this machine), not to {base_url!r}",
            hint="start `tunelab serve` locally and pass http://127.0.0.1:PORT",
        )
    return base_url.rstrip("/").removesuffix("/v1")


def run_load(
    base_url: str,
    api_key: str | None,
    *,
    clients: int = 16,
    requests: int = 200,
    max_tokens: int = 16,
    model: str = "default",
    db: str | Path | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Send ``requests`` chat completions from ``clients`` threads; see the module docstring.

    ``base_url``: the server's root or its ``/v1`` URL (loopback only). Returns a
    JSON-ready summary.
    """
    import httpx

    root = _check_loopback(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    lock = threading.Lock()
    next_index = iter(range(requests))
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    tokens = [0]
    rated: list[str] = []

    def one(client: Any, i: int) -> None:
        body = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": i,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        }
        start = time.perf_counter()
        try:
            r = client.post("/v1/chat/completions", json=body)
            status, data = str(r.status_code), r.json()
        except (httpx.HTTPError, ValueError) as exc:
            status, data = type(exc).__name__, {"error": {"message": str(exc)}}
        elapsed = (time.perf_counter() - start) * 1000
        rate = status == "200" and db is not None and i % FEEDBACK_EVERY == 0
        if rate:
            fb = client.post("/v1/feedback", json={"id": data["id"], "rating": "up"})
            rate = fb.status_code == 200
        with lock:
            statuses[status] += 1
            latencies.append(elapsed)
            if status == "200":
                tokens[0] += data["usage"]["completion_tokens"]
            elif len(errors) < 5:
                errors.append(str(data.get("error", data))[:300])
            if rate:
                rated.append(data["id"])

    def worker() -> None:
        with httpx.Client(base_url=root, headers=headers, timeout=timeout) as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                one(client, i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {
        "clients": clients,
        "requests": requests,
        "max_tokens": max_tokens,
        "seconds": round(seconds, 2),
        "requests_per_second": round(requests / seconds, 2),
        "completion_tokens": tokens[0],
        "tokens_per_second": round(tokens[0] / seconds, 1),
        "latency_ms": _latency(latencies),
        "status_counts": dict(sorted(statuses.items())),
        "errors": errors,
    }
    if db is not None:
        out["feedback"] = {"sent": len(rated), "stored": _stored(db, rated)}
    return out


def _latency(values: list[float]) -> dict[str, float | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    mean = sum(values) / len(values) if values else None
    return {
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "mean": r(mean),
        "max": r(max(values, default=None)),
    }


def _stored(db: str | Path, ids: list[str]) -> int:
    """How many of the completions rated in this run have feedback in the store."""
    from tunelab.serving.store import FeedbackStore

    store = FeedbackStore(str(db))
    try:
        return sum(1 for i in ids if (row := store.get_completion(i)) and row["feedback"])
    finally:
        store.close()
