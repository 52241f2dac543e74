"""Macro precision over the label list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task
from tunelab.evaluation.metrics._classification import class_scores, macro


class Precision:
    """precision_macro = (1/K) Σ_k TP_k / (TP_k + FP_k), with 0/0 scored 0.

    K runs over ``labels`` (default: the sorted set of references), as sklearn's
    ``precision_score(average="macro", labels=labels, zero_division=0)``.
    Output: ``{"precision_macro": float in [0, 1]}``.
    """

    name = "precision"
    task: Task = "classification"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        _, _, scores = class_scores(self.name, predictions, references, labels)
        return {"precision_macro": macro(scores, "precision")}
