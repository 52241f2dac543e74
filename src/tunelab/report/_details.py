"""The smaller tables inside the report's sections: drops, labels, PII, per-class scores,
confusion matrices, prediction samples. Pure: typed parts of the results (and the
val_samples.jsonl lines) in, escaped markup out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunelab.report._format import Safe, esc, fmt, fmt_metric, pre, table
from tunelab.results import ClassScores, ConfusionMatrix, DataCard, Sample, TaskCard

__all__ = [
    "confusion_table",
    "dropped_table",
    "is_correct",
    "label_balance_table",
    "params_text",
    "per_class_table",
    "pii_note",
    "samples_table",
    "val_samples_table",
]

SAMPLES_SHOWN = 5


def is_correct(sample: Sample) -> bool:
    """The sample's ``correct`` flag, or else prediction == reference (both stripped)."""
    if sample.correct is not None:
        return sample.correct
    return sample.prediction.strip() == sample.reference.strip()


def samples_table(samples: Sequence[Sample], caption: str) -> Safe:
    """Prompt, prediction, reference (and confidence when scored) of each sample."""
    if not samples:
        return Safe(f'<p class="absent">no {esc(caption)} predictions among the samples</p>')
    with_conf = any(s.confidence is not None for s in samples)
    headers = ["prompt", "prediction", "reference", *(["confidence"] if with_conf else [])]
    rows = [
        [
            pre(s.prompt),
            pre(s.prediction),
            pre(s.reference),
            *([fmt_metric(s.confidence)] if with_conf else []),
        ]
        for s in samples
    ]
    return Safe(
        f'<div class="samples {esc(caption)}">'
        f"{table(headers, rows, numeric=[3], caption=caption)}</div>"
    )


def val_samples_table(samples: Sequence[Mapping[str, Any]]) -> Safe | str:
    """The validation generations of the latest logged step (val_samples.jsonl)."""
    steps = [s["step"] for s in samples if isinstance(s.get("step"), int)]
    if not steps:
        return ""
    last = max(steps)
    latest = [s for s in samples if s.get("step") == last][:SAMPLES_SHOWN]
    rows = [
        [pre(s.get("prompt", "")), pre(s.get("prediction", "")), pre(s.get("reference", ""))]
        for s in latest
    ]
    return table(
        ["prompt", "prediction", "reference"],
        rows,
        caption=f"validation generations at step {last}",
    )


def dropped_table(tasks: Mapping[str, TaskCard]) -> Safe | str:
    """Rows dropped per task and reason, recipe filters included."""
    rows = [[name, why, fmt(n)] for name, t in tasks.items() for why, n in t.dropped.items()]
    rows += [
        [name, f"recipe: {why}", fmt(n)]
        for name, t in tasks.items()
        for why, n in t.recipe_dropped.items()
    ]
    if not rows:
        return ""
    return table(
        ["task", "stage: reason", "rows"],
        rows,
        numeric=[2],
        caption="dropped rows by reason (each one is in data/rejected.jsonl)",
    )


def label_balance_table(card: DataCard) -> Safe | str:
    """Rows per label in each split."""
    balance, labels = card.label_balance or {}, card.labels or []
    if not balance or not labels:
        return ""
    rows = [[split, *(fmt(counts.get(x, 0)) for x in labels)] for split, counts in balance.items()]
    return table(
        ["split", *map(str, labels)],
        rows,
        numeric=range(1, len(labels) + 1),
        caption="labels per split",
    )


def pii_note(card: DataCard) -> Safe | str:
    """What personal data was found and what the policy did with it."""
    pii = card.pii
    if pii is None:
        return ""
    found = ", ".join(f"{k}: {fmt(v)}" for k, v in sorted(pii.found.items()))
    text = f"Personal data (policy {pii.policy}): {found or 'none found'}."
    if pii.note:
        text += f" {pii.note}"
    return Safe(f"<p>{esc(text)}</p>")


def per_class_table(per_class: Mapping[str, ClassScores] | None) -> Safe | str:
    """Precision, recall, F1 and support of each class."""
    if not per_class:
        return ""
    rows = [
        [label, fmt_metric(s.precision), fmt_metric(s.recall), fmt_metric(s.f1), fmt(s.support)]
        for label, s in per_class.items()
    ]
    return table(
        ["class", "precision", "recall", "F1", "support"],
        rows,
        numeric=range(1, 5),
        caption="fine-tuned, per class",
    )


def confusion_table(cm: ConfusionMatrix | None, who: str) -> Safe | str:
    """The confusion matrix, true labels as rows and predicted labels as columns."""
    if cm is None or not cm.labels or len(cm.matrix) != len(cm.labels):
        return ""
    rows = [
        [f"true {x}", *map(fmt, counts)] for x, counts in zip(cm.labels, cm.matrix, strict=True)
    ]
    return table(
        ["", *(f"predicted {x}" for x in cm.labels)],
        rows,
        numeric=range(1, len(cm.labels) + 1),
        caption=f"{who}, confusion matrix",
    )


def params_text(trainable: int | None, total: int | None) -> str | None:
    """``"1,953,792 of 136,468,800 (1.43%)"``."""
    if trainable is None:
        return None
    if total:
        return f"{fmt(trainable)} of {fmt(total)} ({100 * trainable / total:.2f}%)"
    return fmt(trainable)
