"""Evaluate a model on a split: predictions, task metrics with intervals, samples.

Two steps, so that every stage that needs raw model outputs (calibration needs the label
scores, ``compare`` the prompt lengths and latency) computes them once:

- :func:`predict` runs the model: label scoring for classification, greedy generation
  otherwise; it records the prompt tokens of every request and the time taken.
- :func:`score` turns predictions into the result dict: metrics, their bootstrap 95%
  intervals, and a sample of correct and wrong predictions for people to read.

:func:`evaluate` is both in one call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.data.tokenize import Encoded
from tunelab.data.types import Example
from tunelab.evaluation.metrics import compute_metrics, perplexity
from tunelab.evaluation.metrics.intervals import metric_intervals
from tunelab.evaluation.scoring import generate, label_logits
from tunelab.models.nll import example_nll
from tunelab.models.task_model import TaskModel

__all__ = ["EvalSettings", "Predictions", "default_metrics", "evaluate", "predict", "score"]

CLASSIFICATION_DEFAULT = ["accuracy", "f1"]
GENERATION_DEFAULT = ["exact_match", "bleu", "rouge"]


@dataclass(frozen=True)
class EvalSettings:
    metrics: Sequence[str]
    batch_size: int
    max_new_tokens: int
    precision: str
    pad_id: int
    samples: int = 8  # predictions kept in the result for people to read (half right, half wrong)
    bootstrap: int = 1000  # resamples of the 95% intervals; 0: none
    seed: int = 0


@dataclass
class Predictions:
    """What the model said about each example, and what it cost.

    ``scores``: (N, C) label log-scores for classification (softmax gives probabilities),
    else None. ``prompt_tokens``: tokens the model read per request. ``nll``/``tokens``:
    per-example summed response NLL and its token count, when perplexity was asked for.
    """

    predictions: list[str]
    references: list[str]
    scores: torch.Tensor | None
    prompt_tokens: list[int]
    seconds: float
    nll: list[float] | None = None
    tokens: list[int] | None = None


def default_metrics(classification: bool) -> list[str]:
    return list(CLASSIFICATION_DEFAULT if classification else GENERATION_DEFAULT)


def predict(
    model: TaskModel,
    tokenizer: Any,
    examples: Sequence[Example],
    items: Sequence[Encoded],
    s: EvalSettings,
    *,
    labels: Sequence[str] | None = None,
    label_ids: Sequence[Sequence[int]] | None = None,
) -> Predictions:
    """Run ``model`` on ``items`` (the encoded ``examples``). ``seconds`` times the model
    calls only; perplexity, when in ``s.metrics``, adds one teacher-forced pass."""
    started = time.perf_counter()
    scores = None
    if labels is not None and label_ids is not None:
        scores = label_logits(
            model, items, label_ids, pad_id=s.pad_id, batch_size=s.batch_size, precision=s.precision
        )  # (N, C)
        predictions = [labels[i] for i in scores.argmax(dim=-1).tolist()]
        references = [str(ex.label) for ex in examples]
    else:
        predictions = generate(
            model,
            tokenizer,
            items,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            precision=s.precision,
        )
        references = [ex.response for ex in examples]
    seconds = time.perf_counter() - started
    out = Predictions(predictions, references, scores, [e.prompt_len for e in items], seconds)
    if "perplexity" in s.metrics and model.head == "lm":
        out.nll, out.tokens = example_nll(model, items, s.pad_id, s.batch_size, s.precision)
    return out


def score(
    p: Predictions,
    examples: Sequence[Example],
    s: EvalSettings,
    *,
    labels: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """The result dict of ``p``: ``n``, ``metrics``, ``ci95``, ``seconds``, ``samples``.

    ``temperature`` divides the label scores before the softmax that gives the sample
    confidences (a fitted calibration temperature); it never changes a prediction.
    """
    names = [m for m in s.metrics if m != "perplexity"]
    metrics = compute_metrics(names, p.predictions, p.references, labels) if names else {}
    ci95 = (
        metric_intervals(
            names, p.predictions, p.references, labels, resamples=s.bootstrap, seed=s.seed,
            nll=p.nll, tokens=p.tokens,
        ) if s.bootstrap else {}
    )  # fmt: skip
    if p.nll is not None and p.tokens is not None:
        metrics["perplexity"] = perplexity(sum(p.nll), sum(p.tokens))
    confidence = [math.nan] * len(p.predictions)
    if p.scores is not None:
        probs = torch.softmax(p.scores / temperature, dim=-1)
        confidence = probs.max(dim=-1).values.tolist()
    return {
        "n": len(p.predictions),
        "metrics": metrics,
        "ci95": ci95,
        "seconds": round(p.seconds, 2),
        "prompt_tokens": round(sum(p.prompt_tokens) / max(len(p.prompt_tokens), 1), 1),
        **({"temperature": temperature} if p.scores is not None else {}),
        "samples": _samples(p, examples, confidence, s.samples),
    }


def evaluate(
    model: TaskModel,
    tokenizer: Any,
    examples: Sequence[Example],
    items: Sequence[Encoded],
    s: EvalSettings,
    *,
    labels: Sequence[str] | None = None,
    label_ids: Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``examples`` (already encoded as ``items``).

    Classification (``labels`` given): label scoring. Otherwise: greedy generation.
    """
    p = predict(model, tokenizer, examples, items, s, labels=labels, label_ids=label_ids)
    return score(p, examples, s, labels=labels, temperature=temperature)


def _samples(
    p: Predictions, examples: Sequence[Example], confidence: list[float], k: int
) -> list[dict[str, Any]]:
    """Up to ``k`` predictions in test order: the first k/2 right and the first wrong ones
    (topped up from the other kind when one is short), each marked ``correct``."""
    rows = []
    for ex, pred, ref, conf in zip(examples, p.predictions, p.references, confidence, strict=True):
        rows.append(
            {
                "prompt": ex.messages[-1]["content"][:300],
                "prediction": pred,
                "reference": ref,
                "correct": pred.strip() == ref.strip(),
                **({} if math.isnan(conf) else {"confidence": round(conf, 4)}),
            }
        )
    right = [i for i, r in enumerate(rows) if r["correct"]]
    wrong = [i for i, r in enumerate(rows) if not r["correct"]]
    n_right = min(len(right), max(k // 2, k - len(wrong)))
    chosen = sorted(right[:n_right] + wrong[: k - n_right])
    return [rows[i] for i in chosen]
