"""The task model's loss: cross-entropy that never builds full-vocabulary logits for
positions that carry no label (sums over whole example lists are in ``nll.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.data.tokenize import IGNORE, Encoded

if TYPE_CHECKING:
    from tunelab.models.task_model import TaskModel

__all__ = [
    "CHUNK",
    "batch_loss",
    "chunked_cross_entropy",
    "chunked_kl",
    "classifier_ce",
    "example_terms",
    "lm_nll",
    "loss_terms",
    "response_ce",
]

CHUNK = 1024  # rows of logits materialised at once
Head = Callable[[torch.Tensor], torch.Tensor]


def batch_loss(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of one batch and the number of terms in the sum.

    LM head: next-token CE on response tokens only (:func:`response_ce`). Classifier head:
    CE of the label from the last prompt token's hidden state (:func:`classifier_ce`).
    The caller divides by the total term count of the optimizer step.
    """
    if model.head == "classifier":
        return classifier_ce(model, batch)
    return response_ce(model, batch)


def response_ce(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Σ next-token CE over the response tokens of a collated batch, and their count N.

    Hidden states of labelled positions are gathered first, so the (N, V) logits cover N
    response tokens, not B x T. Packed rows (``position_ids``) attend block-diagonally.
    """
    if "position_ids" in batch:  # packed rows: block-diagonal attention from position restarts
        hidden = model.hidden(batch["input_ids"], None, position_ids=batch["position_ids"])
    else:
        hidden = model.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    targets, selected = _targets(batch)
    h = hidden[:, :-1][selected]  # (N, H)
    return chunked_cross_entropy(model.lm_head, h, targets[selected]), int(selected.sum())


def classifier_ce(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Σ CE(classifier(h_last_prompt), class) over the B rows of a batch, and B."""
    assert model.classifier is not None
    hidden = model.hidden(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
    rows = torch.arange(hidden.shape[0])
    last = hidden[rows, batch["prompt_len"] - 1]  # (B, H)
    logits = model.classifier(last).float()  # (B, C)
    target = batch["class_index"]
    return F.cross_entropy(logits, target, reduction="sum"), int(target.numel())


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


def chunked_kl(
    student_head: Head,
    teacher_head: Head,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """Σ_rows KL(softmax(z_t / T) ‖ softmax(z_s / T)), z = head(h), ``chunk`` rows at a time.

    h_student, h_teacher: (N, H) hidden states of the same N positions; the result is an
    fp32 scalar, differentiable through ``student_head`` and ``h_student`` only. As in
    :func:`chunked_cross_entropy`, the (chunk, V) logits of both models exist one chunk at
    a time: with autograd each chunk is recomputed in backward.
    """
    if h_student.shape[0] <= chunk:
        return _kl_sum(student_head, teacher_head, h_student, h_teacher, temperature)
    total = h_student.new_zeros((), dtype=torch.float32)
    for start in range(0, h_student.shape[0], chunk):
        hs, ht = h_student[start : start + chunk], h_teacher[start : start + chunk]
        if torch.is_grad_enabled() and hs.requires_grad:
            part = checkpoint(_kl_sum, student_head, teacher_head, hs, ht, temperature,
                              use_reentrant=False)  # fmt: skip
        else:
            part = _kl_sum(student_head, teacher_head, hs, ht, temperature)
        total = total + part
    return total


def _kl_sum(
    student_head: Head, teacher_head: Head, hs: torch.Tensor, ht: torch.Tensor, temperature: float
) -> torch.Tensor:
    with torch.no_grad():
        log_t = F.log_softmax(teacher_head(ht).float() / temperature, dim=-1)  # (n, V)
    log_s = F.log_softmax(student_head(hs).float() / temperature, dim=-1)  # (n, V)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum")


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
