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

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        check_inputs(self.name, predictions, references)
        hits = sum(
            normalise(p, case_fold=self.case_fold) == normalise(r, case_fold=self.case_fold)
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(references)}
