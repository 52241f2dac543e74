"""ROUGE-1, ROUGE-2 and ROUGE-L through Google's rouge-score package."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task, check_inputs

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Rouge:
    """ROUGE-N and ROUGE-L F-measure (Lin, 2004), averaged over examples.

    ROUGE-N: n-gram overlap, P = overlap / |pred n-grams|, R = overlap / |ref n-grams|;
    ROUGE-L: the same with the longest common subsequence; F = 2PR / (P + R).
    Scored per example with ``RougeScorer(..., use_stemmer=True)`` (Porter stemmer) and
    averaged. The package's tokenizer lowercases and keeps only ``[a-z0-9]`` runs, so text
    without ASCII letters or digits scores 0.
    Output: ``{"rouge1", "rouge2", "rougeL"}``, each a float in [0, 1].
    """

    name = "rouge"
    task: Task = "generation"

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        check_inputs(self.name, predictions, references)
        from rouge_score.rouge_scorer import RougeScorer  # imports nltk: seconds, so lazily

        scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
        totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(target=ref, prediction=pred)
            for key in ROUGE_TYPES:
                totals[key] += scores[key].fmeasure
        return {key: total / len(references) for key, total in totals.items()}
