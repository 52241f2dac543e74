"""Macro recall over the label list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task
from tunelab.evaluation.metrics._classification import class_scores, macro


class Recall:
    """recall_macro = (1/K) Σ_k TP_k / N_k, with N_k the support of label k and 0/0 scored 0.

    K runs over ``labels`` (default: the sorted set of references), as sklearn's
    ``recall_score(average="macro", labels=labels, zero_division=0)``.
    Output: ``{"recall_macro": float in [0, 1]}``.
    """

    name = "recall"
    task: Task = "classification"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        _, _, scores = class_scores(self.name, predictions, references, labels)
        return {"recall_macro": macro(scores, "recall")}
