"""Accuracy: the share of predictions equal to their reference label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task, check_inputs
from tunelab.evaluation.metrics._classification import resolve_labels


class Accuracy:
    """accuracy = (1/N) Σ_i 1[prediction_i == reference_i].

    Exact string comparison; a prediction outside the label list is simply wrong. References
    must lie in ``labels`` when it is given. Output: ``{"accuracy": float in [0, 1]}``.
    """

    name = "accuracy"
    task: Task = "classification"

    def per_example(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, list[float]]:
        """``{"accuracy": [1.0 if prediction_i == reference_i else 0.0, ...]}``."""
        check_inputs(self.name, predictions, references)
        resolve_labels(self.name, references, labels)
        return {"accuracy": [float(p == r) for p, r in zip(predictions, references, strict=True)]}

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        correct = self.per_example(predictions, references, labels)["accuracy"]
        return {"accuracy": sum(correct) / len(correct)}
