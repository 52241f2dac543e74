"""Losses that never build full-vocabulary logits for positions that carry no label."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tunelab.data.batching import collate, eval_batches
from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import TrainingError
from tunelab.models.task_model import TaskModel
from tunelab.training.optim import autocast

__all__ = ["batch_loss", "mean_loss"]


def batch_loss(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of one batch and the number of terms in the sum.

    LM head: next-token CE on response tokens only. Hidden states of labelled positions
    are gathered first, so the (N, V) logits cover N response tokens, not B x T.
    Classifier head: CE of the label from the last prompt token's hidden state.
    The caller divides by the total term count of the optimizer step.
    """
    hidden = model.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    if model.head == "classifier":
        assert model.classifier is not None
        rows = torch.arange(hidden.shape[0])
        last = hidden[rows, batch["prompt_len"] - 1]  # (B, H)
        logits = model.classifier(last).float()  # (B, C)
        target = batch["class_index"]
        return F.cross_entropy(logits, target, reduction="sum"), int(target.numel())
    targets = batch["labels"][:, 1:]  # token t+1 is predicted at position t: (B, T-1)
    selected = targets != IGNORE
    h = hidden[:, :-1][selected]  # (N, H)
    logits = model.lm_head(h).float()  # (N, V)
    return F.cross_entropy(logits, targets[selected], reduction="sum"), int(selected.sum())


@torch.no_grad()
def mean_loss(
    model: TaskModel,
    items: Sequence[Encoded],
    pad_id: int,
    batch_size: int,
    precision: str,
) -> float:
    """Mean loss per term over ``items`` (validation loss; exp() of it is perplexity)."""
    if not items:
        raise TrainingError("cannot compute a loss on an empty split", hint="raise data.split.val")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, terms = 0.0, 0
    for idx in eval_batches([e.length for e in items], batch_size):
        batch = collate([items[i] for i in idx], pad_id)
        with autocast(precision, device):
            loss_sum, n = batch_loss(model, {k: v.to(device) for k, v in batch.items()})
        total, terms = total + loss_sum.item(), terms + n
    model.train(was_training)
    return total / max(terms, 1)
