"""ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum through Google's rouge-score package."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from tunelab.evaluation.metrics._checks import Task, check_inputs

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class Rouge:
    """ROUGE-N, ROUGE-L and ROUGE-Lsum F-measure (Lin, 2004), averaged over examples.

    ROUGE-N: n-gram overlap, P = overlap / |pred n-grams|, R = overlap / |ref n-grams|;
    ROUGE-L: the same with the longest common subsequence (LCS) of the whole texts;
    ROUGE-Lsum: summary-level LCS, rouge-score's ``rougeLsum``: both texts are split into
    sentences **on newlines** (``"\\n"``; no sentence splitter runs), and the overlap is
    Σ_{ref sentence r} |∪_{pred sentence p} LCS(r, p)|. Put one sentence per line to get
    summary-level scores; text without newlines scores the same as ROUGE-L. F = 2PR / (P + R).

    Scored per example with rouge-score's default tokenizer and Porter stemmer (the same
    tokens as ``RougeScorer(..., use_stemmer=True)``, with each word's stem cached) and
    averaged. The package's tokenizer lowercases and keeps only ``[a-z0-9]`` runs, so text
    without ASCII letters or digits scores 0.
    Output: ``{"rouge1", "rouge2", "rougeL", "rougeLsum"}``, each a float in [0, 1].
    """

    name = "rouge"
    task: Task = "generation"

    def per_example(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, list[float]]:
        """``{rouge type: [F-measure of example i, ...]}``, the scores ``compute`` averages."""
        check_inputs(self.name, predictions, references)
        from rouge_score.rouge_scorer import RougeScorer  # imports nltk: seconds, so lazily

        scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=_StemCachingTokenizer())
        scores: dict[str, list[float]] = {key: [] for key in ROUGE_TYPES}
        for pred, ref in zip(predictions, references, strict=True):
            result = scorer.score(target=ref, prediction=pred)
            for key in ROUGE_TYPES:
                scores[key].append(result[key].fmeasure)
        return scores

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        scores = self.per_example(predictions, references, labels)
        return {key: sum(values) / len(values) for key, values in scores.items()}


class _StemCachingTokenizer:
    """rouge-score's ``DefaultTokenizer(use_stemmer=True)`` with a per-word stem cache.

    Stemming is most of ROUGE's time and text repeats words, so each distinct word is
    stemmed once; the tokens are identical.
    """

    def __init__(self) -> None:
        from nltk.stem.porter import PorterStemmer
        from rouge_score.tokenize import tokenize

        self.stem = functools.lru_cache(maxsize=1 << 16)(PorterStemmer().stem)
        self._tokenize = tokenize

    def tokenize(self, text: str) -> list[str]:
        return list(self._tokenize(text, self))
