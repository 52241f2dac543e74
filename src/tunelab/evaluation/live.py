"""Task metrics during training: a small val subset decoded and scored at validations.

Validation loss says whether the model fits the val responses; it does not say whether
greedy decoding produces the right answer (a model can lower the loss while its
generations stay wrong or get longer). :class:`ValScorer` answers that every few steps on
a fixed, seeded val subset and keeps a few predictions for people to read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunelab.data.tokenize import Encoded
from tunelab.data.types import Example
from tunelab.evaluation.evaluate import EvalSettings, predict
from tunelab.evaluation.metrics import compute_metrics
from tunelab.models.task_model import TaskModel

__all__ = ["ValScorer"]

KEPT_SAMPLES = 4  # predictions written per scoring to val_samples.jsonl


class ValScorer:
    """Callable ``(model, step) -> {"val_<metric>": value}`` for :func:`training.loop.fit`.

    Scores at steps that are multiples of ``every``; other steps return ``{}``. Samples go
    to ``samples_path`` (none when it is None: an FSDP job's ranks other than 0) as JSON
    lines ``{"step", "prompt", "prediction", "reference"}``;
    lines of the step being scored and later are replaced, so a resumed run that re-does
    steps leaves no duplicates.
    """

    def __init__(
        self,
        tokenizer: Any,
        examples: Sequence[Example],
        items: Sequence[Encoded],
        settings: EvalSettings,
        *,
        every: int,
        samples_path: Path | None,
        labels: Sequence[str] | None = None,
        label_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.examples, self.items = list(examples), list(items)
        # perplexity repeats the val loss; intervals are not needed for a curve
        names = [m for m in settings.metrics if m != "perplexity"]
        self.settings = replace(settings, metrics=names, bootstrap=0)
        self.every = every
        self.samples_path = samples_path
        self.labels, self.label_ids = labels, label_ids

    def __call__(self, model: TaskModel, step: int) -> dict[str, float]:
        if step % self.every or not self.items:
            return {}
        p = predict(
            model, self.tokenizer, self.examples, self.items, self.settings,
            labels=self.labels, label_ids=self.label_ids,
        )  # fmt: skip
        metrics = compute_metrics(self.settings.metrics, p.predictions, p.references, self.labels)
        if self.samples_path is not None:
            self._keep_samples(self.samples_path, step, p.predictions, p.references)
        return {f"val_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)} | {
            "val_seconds": round(p.seconds, 2)
        }

    def _keep_samples(
        self, path: Path, step: int, predictions: list[str], references: list[str]
    ) -> None:
        kept = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line)["step"] < step:
                    kept.append(line)
        for ex, pred, ref in list(zip(self.examples, predictions, references, strict=True))[
            :KEPT_SAMPLES
        ]:
            row = {"step": step, "prompt": ex.messages[-1]["content"][:300],
                   "prediction": pred, "reference": ref}  # fmt: skip
            kept.append(json.dumps(row, ensure_ascii=False))
        path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
