"""Response-token cross-entropy: the objective of supervised fine-tuning with the LM head."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunelab.data.tokenize import Encoded
from tunelab.models.loss import example_terms, response_ce
from tunelab.models.task_model import TaskModel

__all__ = ["LM"]


class LM:
    """Σ over response tokens t of −log p_θ(y_t | prompt, y_<t): next-token cross-entropy
    on the response only (prompt and padding carry no terms); one term per response token
    but an example's first token. Through :func:`tunelab.models.loss.response_ce`, which
    builds logits for the response positions only, a chunk at a time."""

    name = "lm"
    fields: tuple[str, ...] = ()
    log_names: tuple[str, ...] = ()

    def prepare(self, model: TaskModel, train: Sequence[Encoded]) -> None:
        """Nothing to cache."""

    def terms(self, example: Encoded) -> float:
        return example_terms(example, "lm")

    def loss(
        self, model: TaskModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        total, n = response_ce(model, batch)  # fp32 scalar, N response tokens
        return total, n, {}
