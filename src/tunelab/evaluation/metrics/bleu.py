"""Corpus BLEU through sacrebleu."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sacrebleu

from tunelab.evaluation.metrics._checks import Task, check_inputs


class Bleu:
    """Corpus BLEU (Papineni et al., 2002) with sacrebleu's defaults (Post, 2018):
    ``13a`` tokenisation, exponential smoothing, case-sensitive, one reference per example.

    BLEU = BP · exp(Σ_{n=1..4} ¼ log p_n), BP = min(1, exp(1 − r/c)), where p_n is the
    clipped n-gram precision pooled over the corpus, r the reference and c the hypothesis
    length. Output: ``{"bleu": float in [0, 100]}``.
    """

    name = "bleu"
    task: Task = "generation"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        check_inputs(self.name, predictions, references)
        result = sacrebleu.corpus_bleu(list(predictions), [list(references)])
        return {"bleu": float(result.score)}
