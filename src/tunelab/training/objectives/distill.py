"""Knowledge distillation from a frozen teacher: the objective of ``tunelab distill``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunelab.data.tokenize import IGNORE, Encoded
from tunelab.models.loss import chunked_cross_entropy, chunked_kl, example_terms
from tunelab.models.task_model import TaskModel

__all__ = ["GENERAL", "Distill"]

GENERAL = "general"  # Encoded.extras key: 1.0 marks a general-data example, else task


class Distill:
    """Soft targets from a teacher mixed with the hard targets, task and general data
    weighed by their share of the loss.

    At every response position i (a next-token prediction; prompt and padding carry no
    terms), with z_s, z_t the student's and the teacher's logits and y_i the reference token:

        ℓ_i = α · τ² · KL(softmax(z_t,i / τ) ‖ softmax(z_s,i / τ)) + (1 − α) · CE(z_s,i, y_i)

    (Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015; τ² keeps
    the soft-target gradients on the scale of the hard-target ones). A position of a task
    example weighs w_task = (1 − g) · N / N_task, one of a general example (marked by
    ``extras["general"] = 1``) w_gen = g · N / N_gen, where N_task and N_gen count the
    response positions of the training list's task and general examples and N = N_task +
    N_gen (:meth:`prepare`). So over the list the weights add up to N, as the unweighted
    terms would, and the general positions carry a share g of the loss however many
    tokens they have (a general chat answer has ~30x the response tokens of a label word;
    weighed by count, 20% of the examples gave 84% of the terms: docs/distill.md). With
    one source only, or for unmarked examples (validation), every weight is 1.

    The teacher (a frozen :class:`TaskModel` in eval mode) runs under no_grad on every
    batch inside the student's forward; only the N response positions' hidden states,
    (N, H), reach the two LM heads, a chunk at a time: no (B, T, V) logits exist.
    """

    name = "distill"
    fields: tuple[str, ...] = (GENERAL,)
    log_names: tuple[str, ...] = ("kl", "ce")  # weighted means per position, unscaled

    def __init__(
        self, teacher: TaskModel, *, alpha: float = 0.5, temperature: float = 2.0,
        general: float = 0.0,
    ) -> None:  # fmt: skip
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature, self.general = alpha, temperature, general
        self.w_task, self.w_general = 1.0, 1.0

    def prepare(self, model: TaskModel, train: Sequence[Encoded]) -> None:
        """The task and general position weights from the training list's term counts."""
        n_task = sum(example_terms(e, "lm") for e in train if not _is_general(e))
        n_general = sum(example_terms(e, "lm") for e in train if _is_general(e))
        if n_task and n_general:
            n = n_task + n_general
            self.w_task = (1 - self.general) * n / n_task
            self.w_general = self.general * n / n_general

    def terms(self, example: Encoded) -> float:
        return self._weight(_is_general(example)) * example_terms(example, "lm")

    def loss(
        self, model: TaskModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        selected = batch["labels"][:, 1:] != IGNORE  # (B, T-1): token t+1 is predicted at t
        targets = batch["labels"][:, 1:]  # (B, T-1)
        general = batch.get(GENERAL, torch.zeros(ids.shape[0], device=ids.device)) > 0  # (B,)
        h_s = model.hidden(ids, mask)[:, :-1]  # (B, T-1, H)
        h_t = None
        if self.alpha > 0:
            with torch.no_grad():
                h_t = self.teacher.hidden(ids, mask)[:, :-1]  # (B, T-1, H)
        total = h_s.new_zeros((), dtype=torch.float32)
        terms, kl_log, ce_log = 0.0, 0.0, 0.0
        for is_general in (False, True):
            rows = selected & (general == is_general)[:, None]  # (B, T-1)
            n = int(rows.sum())
            if n == 0:
                continue
            w = self._weight(is_general)
            kl = ce = total.new_zeros(())
            if h_t is not None:
                kl = chunked_kl(model.lm_head, self.teacher.lm_head, h_s[rows], h_t[rows],
                                self.temperature)  # fmt: skip
            if self.alpha < 1:
                ce = chunked_cross_entropy(model.lm_head, h_s[rows], targets[rows])
            part = self.alpha * self.temperature**2 * kl + (1 - self.alpha) * ce
            total = total + w * part
            terms += w * n
            kl_log, ce_log = kl_log + w * kl.item(), ce_log + w * ce.item()
        return total, terms, {"kl": kl_log, "ce": ce_log}

    def _weight(self, is_general: bool) -> float:
        return self.w_general if is_general else self.w_task


def _is_general(example: Encoded) -> bool:
    return example.extras.get(GENERAL, 0.0) > 0
