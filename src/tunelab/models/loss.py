"""The task model's loss: cross-entropy that never builds full-vocabulary logits for
positions that carry no label (sums over whole example lists are in ``nll.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.data.tokenize import IGNORE, Encoded

if TYPE_CHECKING:
    from tunelab.models.task_model import TaskModel

__all__ = ["CHUNK", "batch_loss", "chunked_cross_entropy", "example_terms", "lm_nll", "loss_terms"]

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


def lm_nll(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token CE over the labelled tokens of a collated LM batch, and its count.

    The LM-head branch of :func:`batch_loss` (equal for ``head="lm"``,
    tested), used whatever the task head is: a classifier-head model keeps its LM head and
    body, and their general language modelling is what the mitigations protect.
    """
    hidden = model.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
    selected = targets != IGNORE
    h = hidden[:, :-1][selected]  # (N, H)
    return chunked_cross_entropy(model.lm_head, h, targets[selected]), int(selected.sum())
