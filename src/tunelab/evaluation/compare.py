"""Was fine-tuning worth it? The base model prompted zero- and few-shot vs the fine-tuned one.

On one test sample, every row reports the task metrics with their 95% intervals, the mean
prompt tokens per request (few-shot prompts carry k demonstrations each time) and the
latency, and :func:`conclusion` says in one sentence which approach won and at what price.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tunelab.data.tokenize import Encoded
from tunelab.data.types import Example
from tunelab.evaluation.evaluate import EvalSettings, Predictions, predict, score
from tunelab.models.task_model import TaskModel

__all__ = [
    "compare_row",
    "conclusion",
    "measure_latency",
    "primary_metric",
    "subset",
    "with_demonstrations",
]

# metrics on a 0-100 scale; every other scalar metric is a 0-1 share
PERCENT_SCALE = {"bleu", "chrf"}
# the headline metric of a generation task, first present wins
GENERATION_PRIMARY = ("rougeL", "chrf", "bleu", "exact_match")
LOWER_IS_BETTER = {"perplexity"}


def with_demonstrations(example: Example, demos: Sequence[Example]) -> Example:
    """``example`` preceded by ``demos`` as solved examples.

    Chat-style examples get one user/assistant turn pair per demonstration after the
    system prompt, then the example's own turns: the format the model was instruction-tuned
    on. Raw completion text gets ``prompt + response`` blocks separated by blank lines.
    """
    if example.raw:
        text = "".join(f"{d.messages[-1]['content']}{d.response}\n\n" for d in demos)
        return replace(example, messages=({"role": "user", "content": text + _last(example)},))
    system = [m for m in example.messages if m["role"] == "system"]
    turns: list[dict[str, str]] = []
    for d in demos:
        turns.append({"role": "user", "content": _last(d)})
        turns.append({"role": "assistant", "content": d.response})
    own = [m for m in example.messages if m["role"] != "system"]
    return replace(example, messages=tuple(system + turns + own))


def _last(example: Example) -> str:
    return example.messages[-1]["content"]


def subset(p: Predictions, idx: Sequence[int]) -> Predictions:
    """The predictions of the examples ``idx``; ``seconds`` is prorated by count."""
    pick = list(idx)
    return Predictions(
        predictions=[p.predictions[i] for i in pick],
        references=[p.references[i] for i in pick],
        scores=None if p.scores is None else p.scores[pick],
        prompt_tokens=[p.prompt_tokens[i] for i in pick],
        seconds=p.seconds * len(pick) / max(len(p.predictions), 1),
        nll=None if p.nll is None else [p.nll[i] for i in pick],
        tokens=None if p.tokens is None else [p.tokens[i] for i in pick],
    )


def measure_latency(
    model: TaskModel,
    tokenizer: Any,
    examples: Sequence[Example],
    items: Sequence[Encoded],
    s: EvalSettings,
    *,
    requests: int,
    labels: Sequence[str] | None = None,
    label_ids: Sequence[Sequence[int]] | None = None,
) -> float | None:
    """Median milliseconds of one request served alone (batch size 1), over the first
    ``requests`` examples after one warm-up request; None when ``requests`` is 0."""
    n = min(requests, len(items))
    if n == 0:
        return None
    one = replace(s, metrics=[], batch_size=1)
    times = []
    for i in [0, *range(n)]:  # the first call warms up kernels and caches; not counted
        started = time.perf_counter()
        predict(model, tokenizer, [examples[i]], [items[i]], one, labels=labels,
                label_ids=label_ids)  # fmt: skip
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times[1:]), 1)


def compare_row(
    name: str,
    p: Predictions,
    examples: Sequence[Example],
    s: EvalSettings,
    *,
    model: str,
    shots: int,
    selection: str | None,
    latency_ms: float | None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One row of the compare table: metrics with intervals, prompt tokens, time."""
    result = score(p, examples, replace(s, samples=0), labels=labels)
    return {
        "name": name,
        "model": model,
        "shots": shots,
        "selection": selection,
        "n": result["n"],
        "metrics": {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)},
        "ci95": result["ci95"],
        "prompt_tokens": result["prompt_tokens"],
        "ms_per_example": round(1000 * p.seconds / max(len(p.predictions), 1), 1),
        "latency_ms": latency_ms,
    }


def primary_metric(rows: Sequence[dict[str, Any]], classification: bool) -> str:
    """The metric the conclusion is about: accuracy for classification, else the first of
    ROUGE-L, chrF, BLEU, exact match; else the first scalar metric."""
    present = list(rows[0]["metrics"]) if rows else []
    order = ("accuracy", "f1_macro") if classification else GENERATION_PRIMARY
    for name in order:
        if name in present:
            return name
    return present[0] if present else ""


def conclusion(rows: Sequence[dict[str, Any]], primary: str) -> str:
    """One sentence: the fine-tuned row against the best base row on ``primary``.

    Points are percentage points for 0-1 metrics and raw points for 0-100 ones. The
    95% intervals are compared too: overlapping intervals are said to be overlapping, so
    a small win is not read as a sure one.
    """
    tuned = next((r for r in rows if r["model"] == "tuned"), None)
    bases = [r for r in rows if r["model"] == "base" and primary in r["metrics"]]
    if tuned is None or not bases or primary not in tuned["metrics"]:
        return "no fine-tuned model to compare" if tuned is None else f"no {primary} to compare"
    sign = -1.0 if primary in LOWER_IS_BETTER else 1.0
    best = max(bases, key=lambda r: sign * r["metrics"][primary])
    scale = 1.0 if primary in PERCENT_SCALE or primary in LOWER_IS_BETTER else 100.0
    gap = sign * (tuned["metrics"][primary] - best["metrics"][primary]) * scale
    unit = "" if primary in LOWER_IS_BETTER else " points"
    overlap = _overlap(tuned["ci95"].get(primary), best["ci95"].get(primary))
    ci = {True: " (95% intervals overlap)", False: " (95% intervals do not overlap)", None: ""}
    cost = _ratio_text(best["prompt_tokens"], tuned["prompt_tokens"], "fewer", "more")
    cost += " prompt tokens per request"
    if tuned["latency_ms"] and best["latency_ms"]:
        cost += ", " + _ratio_text(best["latency_ms"], tuned["latency_ms"], "faster", "slower")
        cost += " per request"
    if abs(gap) < 0.05:
        return f"fine-tuned ties with {best['name']} on {primary}{ci[overlap]}, with {cost}"
    if gap > 0:
        return (
            f"fine-tuned beats {best['name']} by {gap:.1f}{unit} of {primary}{ci[overlap]}, "
            f"with {cost}"
        )
    return (
        f"{best['name']} beats fine-tuned by {-gap:.1f}{unit} of {primary}{ci[overlap]}; "
        f"fine-tuned runs with {cost}"
    )


def _ratio_text(theirs: float, ours: float, less: str, more: str) -> str:
    """``"5.1x fewer"``, ``"1.3x more"`` or ``"about the same"`` (within 5%)."""
    ratio = theirs / max(ours, 1e-9)
    if abs(ratio - 1) < 0.05:
        return "about the same"
    return f"{ratio:.1f}x {less}" if ratio > 1 else f"{1 / ratio:.1f}x {more}"


def _overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]
