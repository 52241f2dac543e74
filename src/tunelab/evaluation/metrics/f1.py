"""F1: macro and micro F1 with the per-class table and confusion matrix behind them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task
from tunelab.evaluation.metrics._classification import class_scores, macro


class F1:
    """F1 = 2PR / (P + R) per label (van Rijsbergen, *Information Retrieval*, 1979).

    - ``f1_macro``: unweighted mean of the per-label F1 over ``labels`` (labels absent from
      both predictions and references count as 0, as in sklearn's ``average="macro"``).
    - ``f1_micro``: F1 of the pooled counts, P = ΣTP / Σ(TP+FP), R = ΣTP / ΣN. It equals
      accuracy unless some predictions fall outside ``labels`` (those are false negatives
      but nobody's false positives).
    - ``per_class``: ``{label: {"precision", "recall", "f1", "support"}}``.
    - ``confusion_matrix``: ``{"labels": [...], "matrix": [[...]]}``, rows = reference,
      columns = prediction, both in label order.

    ``labels`` defaults to the sorted set of references.
    """

    name = "f1"
    task: Task = "classification"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        order, matrix, scores = class_scores(self.name, predictions, references, labels)
        tp = sum(matrix[i][i] for i in range(len(order)))
        predicted = sum(sum(row) for row in matrix)
        p = tp / predicted if predicted else 0.0
        r = tp / len(references)
        return {
            "f1_macro": macro(scores, "f1"),
            "f1_micro": 2 * p * r / (p + r) if p + r else 0.0,
            "per_class": scores,
            "confusion_matrix": {"labels": order, "matrix": matrix},
        }
