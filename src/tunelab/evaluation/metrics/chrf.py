"""Corpus chrF through sacrebleu."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sacrebleu

from tunelab.evaluation.metrics._checks import Task, check_inputs


class Chrf:
    """Corpus chrF (Popović, 2015) with sacrebleu's defaults: chrF2 (β = 2), character n-grams
    of orders 1..6 with whitespace removed, no word n-grams (word order 0), case-sensitive, one
    reference per example.

    For each order n, P_n = matched / hypothesis n-grams and R_n = matched / reference
    n-grams, pooled over the corpus; P and R are the means of P_n and R_n over the orders
    that have both hypothesis and reference n-grams, and
    chrF = 100 · (1 + β²) P R / (β² P + R). Output: ``{"chrf": float in [0, 100]}``.
    """

    name = "chrf"
    task: Task = "generation"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        check_inputs(self.name, predictions, references)
        result = sacrebleu.corpus_chrf(list(predictions), [list(references)])
        return {"chrf": float(result.score)}
