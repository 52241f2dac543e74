"""Losses summed over lists of examples: validation loss, per-example NLL (perplexity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.batching import collate, eval_batches, micro_batches
from tunelab.data.tokenize import Encoded
from tunelab.errors import TrainingError
from tunelab.models.loss import _targets
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel

__all__ = ["example_nll", "loss_pieces", "loss_sums", "mean_loss"]


def mean_loss(
    model: TaskModel,
    items: Sequence[Encoded],
    pad_id: int,
    batch_size: int,
    precision: str,
    *,
    max_tokens: int | None = None,
) -> float:
    """Mean loss per term over ``items`` (validation loss; exp() of it is perplexity)."""
    if not items:
        raise TrainingError("cannot compute a loss on an empty split", hint="raise data.split.val")
    total, terms = loss_sums(model, loss_pieces(items, pad_id, batch_size, max_tokens), precision)
    return total / max(terms, 1)


@torch.no_grad()
def loss_sums(
    model: TaskModel,
    pieces: Sequence[dict[str, torch.Tensor]],
    precision: str,
    *,
    counted: int | None = None,
    loss: Callable[..., Any] | None = None,
) -> tuple[float, float]:
    """Summed loss and term count over ``pieces`` (:func:`loss_pieces`).

    Only the first ``counted`` pieces count (default: all). Under FSDP every forward is a
    collective, so a rank with a smaller share of the val split runs uncounted repeats
    until it has run as many forwards as the others. ``loss``: a training objective's
    ``loss`` (it returns the sum and the count first); default the model's head loss.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, terms = 0.0, 0
    for k, batch in enumerate(pieces):
        with autocast(precision, device):
            # through the module's call (not batch_loss): an FSDP root gathers its weights
            out = model({key: v.to(device) for key, v in batch.items()}, loss)
        loss_sum, n = out[0], out[1]
        if counted is None or k < counted:
            total, terms = total + loss_sum.item(), terms + n
    model.train(was_training)
    return total, terms


def loss_pieces(
    items: Sequence[Encoded], pad_id: int, batch_size: int, max_tokens: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """The padded pieces a loss over ``items`` is computed on (batches of similar length,
    split above ``max_tokens``)."""
    return [
        batch
        for idx in eval_batches([e.length for e in items], batch_size)
        for batch in micro_batches([items[i] for i in idx], pad_id, max_tokens=max_tokens)
    ]


@torch.no_grad()
def example_nll(
    model: TaskModel, items: Sequence[Encoded], pad_id: int, batch_size: int, precision: str
) -> tuple[list[float], list[int]]:
    """Per example: the summed next-token NLL of its response tokens (nats) and their count.

    What perplexity and its bootstrap interval are computed from; the sums over all items
    equal :func:`mean_loss`'s numerator and denominator (tested).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, tokens = [0.0] * len(items), [0] * len(items)
    for idx in eval_batches([e.length for e in items], batch_size):
        batch = collate([items[i] for i in idx], pad_id)
        with autocast(precision, device):
            hidden = model.hidden(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        targets, selected = _targets(batch)
        selected = selected.to(device)
        rows = torch.arange(len(idx), device=device)[:, None].expand_as(selected)[selected]
        logits = model.lm_head(hidden[:, :-1][selected]).float()  # (N, V)
        per_token = F.cross_entropy(logits, targets.to(device)[selected], reduction="none")
        sums = torch.zeros(len(idx), device=device).index_add_(0, rows, per_token)
        counts = selected.sum(dim=1)
        for j, i in enumerate(idx):
            nll[i], tokens[i] = float(sums[j]), int(counts[j])
    model.train(was_training)
    return nll, tokens
