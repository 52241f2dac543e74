"""Confusion counts over a fixed label list, the basis of every classification metric."""

from __future__ import annotations

from collections.abc import Sequence

from tunelab.errors import DataError
from tunelab.evaluation.metrics._checks import check_inputs


def resolve_labels(name: str, references: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """The label order to score over: ``labels`` as given, else the sorted reference labels.

    Raises ``DataError`` for duplicate labels or a reference outside the label list.
    """
    resolved = list(labels) if labels is not None else sorted(set(references))
    if not resolved:
        raise DataError(f"metric '{name}': the label list is empty")
    if len(set(resolved)) != len(resolved):
        raise DataError(f"metric '{name}': duplicate labels in {resolved}")
    unknown = sorted(set(references) - set(resolved))
    if unknown:
        raise DataError(
            f"metric '{name}': references {unknown} are not in the label list {resolved}",
            hint="add them to the task's labels or fix the test data",
        )
    return resolved


def confusion(
    name: str,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None,
) -> tuple[list[str], list[list[int]]]:
    """``(labels, matrix)`` with ``matrix[i][j]`` = examples of reference ``labels[i]``
    predicted as ``labels[j]``.

    A prediction outside the label list has no column: it is wrong (a false negative of its
    reference class) and a false positive of no class, so row ``i`` sums to the support of
    ``labels[i]`` minus its out-of-label predictions.
    """
    check_inputs(name, predictions, references)
    order = resolve_labels(name, references, labels)
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for pred, ref in zip(predictions, references, strict=True):
        if pred in index:
            matrix[index[ref]][index[pred]] += 1
    return order, matrix


def per_class(
    labels: Sequence[str], matrix: list[list[int]], supports: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Per-label precision, recall, F1 and support; 0/0 is scored 0.

    precision = TP / (TP + FP), recall = TP / support, F1 = 2PR / (P + R).
    """
    scores: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, supports[i])
        scores[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": supports[i],
        }
    return scores


def class_scores(
    name: str,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None,
) -> tuple[list[str], list[list[int]], dict[str, dict[str, float]]]:
    """Label order, confusion matrix and per-class scores in one call."""
    order, matrix = confusion(name, predictions, references, labels)
    supports = [sum(1 for ref in references if ref == label) for label in order]
    return order, matrix, per_class(order, matrix, supports)


def macro(scores: dict[str, dict[str, float]], key: str) -> float:
    """Unweighted mean of ``key`` over every label, absent ones included (as sklearn)."""
    return sum(s[key] for s in scores.values()) / len(scores)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0
