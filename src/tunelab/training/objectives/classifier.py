"""Classifier-head cross-entropy: the objective of ``method.head: classifier``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunelab.data.tokenize import Encoded
from tunelab.models.loss import classifier_ce
from tunelab.models.task_model import TaskModel

__all__ = ["Classifier"]


class Classifier:
    """Σ over examples of −log softmax(W h_last + b)_c: cross-entropy of the label c from
    the hidden state of the last prompt token, h_last (B, H), through the classifier head
    W (C, H); one term per example (:func:`tunelab.models.loss.classifier_ce`)."""

    name = "classifier"
    fields: tuple[str, ...] = ()
    log_names: tuple[str, ...] = ()

    def prepare(self, model: TaskModel, train: Sequence[Encoded]) -> None:
        """Nothing to cache."""

    def terms(self, example: Encoded) -> float:
        return 1

    def loss(
        self, model: TaskModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        if model.classifier is None:
            raise ValueError("the classifier objective needs a model with method.head: classifier")
        total, n = classifier_ce(model, batch)  # fp32 scalar, B examples
        return total, n, {}
