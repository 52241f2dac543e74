"""Exact match after light normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task, check_inputs


def normalise(text: str, *, case_fold: bool = False) -> str:
    """Strip leading and trailing whitespace; with ``case_fold``, also ``str.casefold()``.

    Inner whitespace and punctuation are kept: ``"New  York"`` does not match ``"New York"``.
    """
    text = text.strip()
    return text.casefold() if case_fold else text


class ExactMatch:
    """exact_match = (1/N) Σ_i 1[normalise(prediction_i) == normalise(reference_i)].

    The registered instance compares case-sensitively; build ``ExactMatch(case_fold=True)``
    for case-insensitive scoring. Output: ``{"exact_match": float in [0, 1]}``.
    """

    name = "exact_match"
    task: Task = "generation"

    def __init__(self, *, case_fold: bool = False) -> None:
        self.case_fold = case_fold

    def per_example(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, list[float]]:
        """``{"exact_match": [1.0 if example i matches else 0.0, ...]}``."""
        check_inputs(self.name, predictions, references)
        fold = self.case_fold
        hits = [
            float(normalise(p, case_fold=fold) == normalise(r, case_fold=fold))
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"exact_match": hits}

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        hits = self.per_example(predictions, references, labels)["exact_match"]
        return {"exact_match": sum(hits) / len(hits)}
