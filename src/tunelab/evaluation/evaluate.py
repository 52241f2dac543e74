"""Evaluate a model on a split: predictions, task metrics, perplexity, samples."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.data.tokenize import Encoded
from tunelab.data.types import Example
from tunelab.evaluation.metrics import compute_metrics
from tunelab.evaluation.scoring import generate, label_logits
from tunelab.models.task_model import TaskModel
from tunelab.training.loss import mean_loss

__all__ = ["EvalSettings", "default_metrics", "evaluate"]

CLASSIFICATION_DEFAULT = ["accuracy", "f1"]
GENERATION_DEFAULT = ["exact_match", "bleu", "rouge"]


@dataclass(frozen=True)
class EvalSettings:
    metrics: Sequence[str]
    batch_size: int
    max_new_tokens: int
    precision: str
    pad_id: int
    samples: int = 8  # predictions kept in the result for people to read


def default_metrics(classification: bool) -> list[str]:
    return list(CLASSIFICATION_DEFAULT if classification else GENERATION_DEFAULT)


def evaluate(
    model: TaskModel,
    tokenizer: Any,
    examples: Sequence[Example],
    items: Sequence[Encoded],
    s: EvalSettings,
    *,
    labels: Sequence[str] | None = None,
    label_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``examples`` (already encoded as ``items``).

    Classification (``labels`` given): label scoring. Otherwise: greedy generation.
    """
    started = time.perf_counter()
    names = [m for m in s.metrics if m != "perplexity"]
    result: dict[str, Any] = {"n": len(items)}
    if labels is not None and label_ids is not None:
        scores = label_logits(
            model, items, label_ids, pad_id=s.pad_id, batch_size=s.batch_size, precision=s.precision
        )  # (N, C)
        probs = torch.softmax(scores, dim=-1)
        predictions = [labels[i] for i in probs.argmax(dim=-1).tolist()]
        references = [str(ex.label) for ex in examples]
        confidence = probs.max(dim=-1).values.tolist()
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
        confidence = [math.nan] * len(items)
    metrics = compute_metrics(names, predictions, references, labels) if names else {}
    if "perplexity" in s.metrics and model.head == "lm":
        loss = mean_loss(model, items, s.pad_id, s.batch_size, s.precision)
        metrics["perplexity"] = math.exp(min(loss, 700.0))
    result["metrics"] = metrics
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["samples"] = [
        {
            "prompt": ex.messages[-1]["content"][:300],
            "prediction": p,
            "reference": r,
            **({} if math.isnan(c) else {"confidence": round(c, 4)}),
        }
        for ex, p, r, c in list(zip(examples, predictions, references, confidence, strict=True))[
            : s.samples
        ]
    ]
    return result
