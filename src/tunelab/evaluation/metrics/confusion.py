"""The confusion matrix on its own, for configs that want it without F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task
from tunelab.evaluation.metrics._classification import confusion


class ConfusionMatrix:
    """``matrix[i][j]`` = number of examples with reference ``labels[i]`` predicted as
    ``labels[j]``; rows = reference, columns = prediction, both in label order.

    ``labels`` defaults to the sorted set of references. A prediction outside the label list
    has no column, so row ``i`` sums to the support of ``labels[i]`` minus its out-of-label
    predictions. The same matrix F1 reports. Output:
    ``{"confusion_matrix": {"labels": [...], "matrix": [[int, ...], ...]}}`` (no scalar).
    """

    name = "confusion_matrix"
    task: Task = "classification"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        order, matrix = confusion(self.name, predictions, references, labels)
        return {"confusion_matrix": {"labels": order, "matrix": matrix}}
