"""Metrics: one file per metric behind an explicit registry keyed by the YAML name.

Every metric is a pure function of the predictions, the references and (for classification)
the label list, and returns a JSON-ready dict of plain floats, ints, lists and dicts. Adding a
metric is one new file plus one line in ``METRICS``; the contract tests pick it up.

Perplexity needs token log-likelihoods rather than strings, so it is the plain function
``perplexity`` instead of a registered ``Metric``.

Bootstrap intervals for the scalar outputs are a separate call,
``tunelab.evaluation.metrics.intervals.metric_intervals``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tunelab.errors import ConfigError
from tunelab.evaluation.metrics._checks import Task
from tunelab.evaluation.metrics.accuracy import Accuracy
from tunelab.evaluation.metrics.bleu import Bleu
from tunelab.evaluation.metrics.chrf import Chrf
from tunelab.evaluation.metrics.confusion import ConfusionMatrix
from tunelab.evaluation.metrics.exact_match import ExactMatch
from tunelab.evaluation.metrics.f1 import F1
from tunelab.evaluation.metrics.perplexity import perplexity
from tunelab.evaluation.metrics.precision import Precision
from tunelab.evaluation.metrics.recall import Recall
from tunelab.evaluation.metrics.rouge import Rouge

__all__ = ["METRICS", "Metric", "Task", "compute_metrics", "get_metric", "perplexity"]


class Metric(Protocol):
    """A metric: its YAML ``name``, the ``task`` it applies to, and a pure ``compute``.

    ``compute`` raises ``DataError`` for empty inputs or mismatched lengths. ``labels`` gives
    the label order for classification metrics and is ignored by generation metrics.
    """

    name: str
    task: Task

    def compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]: ...


METRICS: dict[str, Metric] = {
    "accuracy": Accuracy(),
    "f1": F1(),
    "precision": Precision(),
    "recall": Recall(),
    "exact_match": ExactMatch(),
    "bleu": Bleu(),
    "rouge": Rouge(),
    "chrf": Chrf(),
    "confusion_matrix": ConfusionMatrix(),
}


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``; ``ConfigError`` listing the valid names if none."""
    try:
        return METRICS[name]
    except KeyError:
        valid = ", ".join(sorted(METRICS))
        raise ConfigError(f"unknown metric '{name}'", hint=f"valid metrics are: {valid}") from None


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run each named metric and merge their outputs into one dict.

    All names are resolved before anything is computed, so a typo fails fast.
    """
    metrics = [get_metric(name) for name in names]
    merged: dict[str, Any] = {}
    for metric in metrics:
        merged.update(metric.compute(predictions, references, labels))
    return merged
