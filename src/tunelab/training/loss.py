"""Losses that never build full-vocabulary logits for positions that carry no label."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.data.batching import collate, eval_batches, micro_batches
from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.errors import TrainingError
from tunelab.models.task_model import TaskModel
from tunelab.training.optim import autocast

__all__ = [
    "batch_loss",
    "chunked_cross_entropy",
    "example_nll",
    "example_terms",
    "loss_pieces",
    "loss_terms",
    "mean_loss",
]

CHUNK = 1024  # rows of logits materialised at once


def batch_loss(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of one batch and the number of terms in the sum.

    LM head: next-token CE on response tokens only. Hidden states of labelled positions
    are gathered first, so the (N, V) logits cover N response tokens, not B x T.
    Classifier head: CE of the label from the last prompt token's hidden state.
    The caller divides by the total term count of the optimizer step.
    """
    if "position_ids" in batch:  # packed rows: block-diagonal attention from position restarts
        hidden = model.hidden(batch["input_ids"], None, position_ids=batch["position_ids"])
    else:
        hidden = model.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    if model.head == "classifier":
        assert model.classifier is not None
        rows = torch.arange(hidden.shape[0])
        last = hidden[rows, batch["prompt_len"] - 1]  # (B, H)
        logits = model.classifier(last).float()  # (B, C)
        target = batch["class_index"]
        return F.cross_entropy(logits, target, reduction="sum"), int(target.numel())
    targets, selected = _targets(batch)
    h = hidden[:, :-1][selected]  # (N, H)
    return chunked_cross_entropy(model.lm_head, h, targets[selected]), int(selected.sum())


def loss_terms(batch: dict[str, torch.Tensor], head: str) -> int:
    """How many terms :func:`batch_loss` sums for ``batch`` (known before any forward)."""
    if head == "classifier":
        return int(batch["class_index"].numel())
    return int(_targets(batch)[1].sum())


def example_terms(e: Encoded, head: str) -> int:
    """:func:`loss_terms` of one example, without collating it (tested equal)."""
    if head == "classifier":
        return 1
    return e.length - max(e.prompt_len, 1)  # response tokens; token 0 is never a target


def _targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets, (B, T-1): token t+1 is predicted at position t; and their mask."""
    targets = batch["labels"][:, 1:]
    return targets, targets != IGNORE


def chunked_cross_entropy(
    head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK
) -> torch.Tensor:
    """Σ_i CE(head(h_i), t_i), computed ``chunk`` rows at a time.

    h: (N, H), targets: (N,). Each chunk's (chunk, V) fp32 logits exist only inside that
    chunk: under autograd the chunk is recomputed in backward (activation checkpointing)
    instead of keeping the logits, so peak memory is chunk x V x 4 bytes whatever N is
    (1,024 rows x 49,152 vocabulary = 192 MiB) instead of N x V x 4.
    The value and its gradients equal the plain computation (tested).
    """
    if h.shape[0] <= chunk:
        return _ce_sum(head, h, targets)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk):
        part_h, part_t = h[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            part = checkpoint(_ce_sum, head, part_h, part_t, use_reentrant=False)
        else:
            part = _ce_sum(head, part_h, part_t)
        total = total + part
    return total


def _ce_sum(head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()  # (n, V)
    return F.cross_entropy(logits, targets, reduction="sum")


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
) -> tuple[float, int]:
    """Summed loss and term count over ``pieces`` (:func:`loss_pieces`).

    Only the first ``counted`` pieces count (default: all). Under FSDP every forward is a
    collective, so a rank with a smaller share of the val split runs uncounted repeats
    until it has run as many forwards as the others.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, terms = 0.0, 0
    for k, batch in enumerate(pieces):
        with autocast(precision, device):
            # through the module's call (not batch_loss): an FSDP root gathers its weights
            loss_sum, n = model({key: v.to(device) for key, v in batch.items()})
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
